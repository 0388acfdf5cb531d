"""Waiting for the store to change: PostgreSQL announces changes (LISTEN/NOTIFY), SQLite is polled.

The announcements come from a trigger (server/migrations/versions/0004_postgres_notify.py): `vace_queue`
carries a model name when a prediction becomes claimable, `vace_changes` a prediction id at each new revision.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.engine import make_url

log = logging.getLogger("vace.store")

QUEUE_CHANNEL = "vace_queue"
CHANGES_CHANNEL = "vace_changes"


def announces(url: str) -> bool:
    """Whether the database at `url` announces its changes (PostgreSQL); others are polled."""
    return make_url(url).get_backend_name() == "postgresql"


class Listener:
    """Blocks until the database announces something on `channel`, or (SQLite) for one poll interval.

    Announcements made while nobody waits are kept by the connection and returned by the next `wait`.
    """

    def __init__(self, url: str, channel: str, poll_s: float):
        self.url = url
        self.channel = channel
        self.poll_s = poll_s
        self.pushes = announces(url)  # else: a timed poll
        self.connects = 0  # LISTENs issued: announcements made between two of them were not heard
        self._conn = None
        if self.pushes:
            self._connect()

    def _connect(self) -> None:
        import psycopg  # the [postgres] extra; only PostgreSQL URLs get here

        url = make_url(self.url)
        params = {k: v for k, v in url.query.items() if isinstance(v, str)}
        conn = psycopg.connect(autocommit=True, **url.translate_connect_args(username="user", database="dbname"),
                               **params)
        conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self.channel)))
        self._conn = conn
        self.connects += 1

    def wait(self, timeout: float) -> list[str]:
        """The payloads announced, as soon as there is one (at most `timeout` s); [] after a poll interval on
        SQLite or when the wait timed out. A lost connection is reopened on the next call (nothing is lost
        for the callers, who re-read the store after every wait)."""
        if not self.pushes:
            time.sleep(min(timeout, self.poll_s))
            return []
        import psycopg  # optional: the [postgres] extra

        try:
            if self._conn is None:
                self._connect()
            payloads = [n.payload for n in self._conn.notifies(timeout=timeout, stop_after=1)]
            if payloads:  # take the rest of a burst without waiting
                payloads += [n.payload for n in self._conn.notifies(timeout=0)]
            return payloads
        except psycopg.OperationalError:
            log.warning("lost the %s listener connection; reconnecting", self.channel, exc_info=True)
            self.close()
            time.sleep(min(timeout, self.poll_s))
            return []

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
