"""A worker's writes to the store, shared by the local worker process and the Ray executor's feeders (kept apart
from the job runner so that the API process, which runs the feeders, never imports the render engine)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from vace.server.store import Prediction, Store
from vace.server.worker.liveness import Liveness
from vace.server.worker.lost import settle_lost

log = logging.getLogger("vace.worker")

STORE_RETRY_MAX_S = 10.0


class StoreWrites:
    """The worker's writes to the store. Each one that lands pokes the change feed; a failure is reported to the
    supervisor (so /health can say why), and a job's final write is retried until the store takes it again."""

    def __init__(self, store: Store, liveness: Liveness | None = None, events: Any = None):
        self.store = store
        self.liveness = liveness
        self.events = events
        self.failing = False

    def _landed(self) -> None:
        if self.liveness is not None:
            self.liveness.changed()
        self._recovered()

    def _recovered(self) -> None:
        if self.failing:
            self.failing = False
            self._tell(None)

    def _failed(self, exc: Exception) -> None:
        log.warning("store write failed: %s", exc)
        self.failing = True
        self._tell(f"{type(exc).__name__}: {exc}")

    def _tell(self, detail: str | None) -> None:
        if self.events is not None:
            self.events.put(("store", detail))

    def beat(self) -> None:
        if self.liveness is not None:
            self.liveness.beat()
            self.liveness.count_queries(self.store.queries)

    def report(self, prediction_id: str, owner: str, **values: Any) -> bool:
        """A progress write; one that fails is dropped (the next one carries the newer state). False when the
        store refused it: the job is no longer this worker's."""
        try:
            held = self.store.report(prediction_id, owner, **values)
        except Exception as exc:  # noqa: BLE001 - progress is best effort; the final write is not
            self._failed(exc)
            return True
        self._landed()
        return held

    def heartbeat(self, prediction_id: str, owner: str, lease_s: float) -> None:
        """A lease renewal; one that fails is dropped (the next one renews the lease)."""
        try:
            self.store.heartbeat(prediction_id, owner, lease_s)
        except Exception:  # noqa: BLE001 - a missed beat is retried
            log.warning("heartbeat for %s failed", prediction_id, exc_info=True)

    def finish(self, prediction_id: str, owner: str, status: str, **values: Any) -> None:
        """The final write, retried with backoff (heartbeating all the while) until the store takes it."""
        self._until_stored(lambda: self.store.finish(prediction_id, owner, status, **values))

    def settle_lost(self, cause: str, owner: str) -> None:
        """settle_lost for the job a lost worker `owner` held, retried like the final write."""
        self._until_stored(lambda: settle_lost(self.store, cause, owner=owner))

    def _until_stored(self, write: Callable[[], Any]) -> None:
        delay = 0.5
        while True:
            try:
                write()
            except Exception as exc:  # noqa: BLE001 - a full or read-only disk: wait for it to come back
                self._failed(exc)
                self.beat()
                time.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)
                continue
            self._landed()
            return

    def claim(self, owner: str, lease_s: float, models: list[str]) -> Prediction | None:
        try:
            job = self.store.claim(owner, lease_s, models=models)
        except Exception as exc:  # noqa: BLE001 - the claim loop waits and tries again
            self._failed(exc)
            return None
        if job is not None:
            self._landed()
        else:
            self._recovered()
        return job
