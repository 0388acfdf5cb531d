"""Bring a database to the newest schema: once, even when several processes open it at the same moment."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent
# pg_advisory_xact_lock key: any constant no other application on the same database uses ("vace" in ASCII).
_PG_LOCK_KEY = 0x76616365


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _sqlite_migration_engine(url: str) -> Engine:
    """SQLite takes its write lock at BEGIN IMMEDIATE; pysqlite's own transaction handling would defer it to the
    first write, so it is switched off and the BEGIN emitted here."""
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextlib.contextmanager
def _locked(url: str) -> Iterator[Connection]:
    """A connection in a transaction that holds the database's migration lock (both have transactional DDL, so
    a migration that fails leaves the schema as it was)."""
    sqlite = url.startswith("sqlite")
    engine = _sqlite_migration_engine(url) if sqlite else create_engine(url)
    try:
        with engine.begin() as conn:
            if not sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            yield conn
    finally:
        engine.dispose()


def upgrade_database(engine: Engine) -> None:
    """Apply the revisions the database lacks. A database made before the first revision (by an older release
    that created its tables directly) is adopted by the first revisions, which skip what already exists."""
    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return
    with _locked(engine.url.render_as_string(hide_password=False)) as conn:
        if current_revision(conn) != head:  # another process may have finished it while we waited for the lock
            command.upgrade(_config(conn), "head")
