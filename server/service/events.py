"""The change feed: one watcher follows the store's change sequence (numbered in commit order, so no change is
missed however long its write waited on a lock) and fans each change out to the waiters of that prediction
(SSE, long polls) and to the webhook dispatcher.

It reads the database when this process wrote (`nudge`), when a local worker says it wrote (`poke`, no query),
when PostgreSQL announces a change on `vace_changes` (LISTEN/NOTIFY: writes by other API processes, their
workers and Ray actors' drivers), at the next Cancel-After deadline, and otherwise only every `fallback_s`
(FALLBACK_S on SQLite, whose other writers are not announced; ANNOUNCED_FALLBACK_S on PostgreSQL, where it only
covers a lost listener connection). An idle server costs well under one query a second."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

from vace.server.service.errors import NotFound
from vace.server.store import Prediction, Store
from vace.server.store_listen import CHANGES_CHANNEL, announces

log = logging.getLogger("vace.events")

WATCH_INTERVAL_S = 0.15  # how often the (free) poke flag is looked at
FALLBACK_S = 3.0  # SQLite: the longest wait between two reads of the database
ANNOUNCED_FALLBACK_S = 60.0  # PostgreSQL: changes are announced; this read is a safety net only
LISTEN_WAIT_S = 1.0  # the listener thread looks at its stop flag this often (no query: a socket wait)
UPDATE_RECHECK_S = 5.0
DEADLINE_SWEEP_S = 60.0  # Cancel-After deadlines are also swept this often, in case a row's change was not seen

ChangeHandler = Callable[["Prediction | None", Prediction], None]


class ChangeFeed:
    def __init__(self, store: Store, on_change: ChangeHandler, on_tick: Callable[[bool], None],
                 fallback_s: float | None = None):
        self.store = store
        self.on_change = on_change
        self.on_tick = on_tick  # called after every tick, True when the tick found changed rows
        self.poke: Callable[[], bool] = lambda: False  # a local worker wrote (see server.worker.liveness)
        self.announced = announces(store.url)
        self.fallback_s = fallback_s or (ANNOUNCED_FALLBACK_S if self.announced else FALLBACK_S)
        self.recheck_s = max(UPDATE_RECHECK_S, self.fallback_s)
        self.listening = threading.Event()  # set once the LISTEN is in place (PostgreSQL)
        self._heard = threading.Event()  # an announced change not read yet (looked at each tick, like `poke`)
        self._stopping = threading.Event()
        self._listener_thread: threading.Thread | None = None
        self._listeners: dict[str, set[asyncio.Queue[Prediction]]] = {}
        self._subscribers: set[asyncio.Queue[Prediction]] = set()
        self._seen: dict[str, Prediction] = {}
        self._cursor = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._cursor = self.store.last_change()  # baseline: no events for changes already made
        for pred in self.store.active():
            self._seen[pred.id] = pred
        self._task = asyncio.create_task(self._watch(), name="prediction-watch")
        if self.announced:
            self._listener_thread = threading.Thread(target=self._listen, name="change-listener", daemon=True)
            self._listener_thread.start()

    def _listen(self) -> None:
        """PostgreSQL: have the next tick read after an announced change (and after each (re)connect, since
        announcements made while no LISTEN was in place were not heard). A burst of announcements costs one read
        per tick at most. A thread: the wait blocks on the connection."""
        listener = None
        heard = 0
        while not self._stopping.is_set():
            try:
                listener = listener or self.store.listener(CHANGES_CHANNEL, poll_s=LISTEN_WAIT_S)
                announced = listener.wait(LISTEN_WAIT_S)
                if announced or listener.connects != heard:
                    heard = listener.connects
                    self._heard.set()
                    self.listening.set()
            except Exception:  # noqa: BLE001 - the fallback read covers the gap; retry the LISTEN
                log.warning("change listener failed; retrying", exc_info=True)
                self._stopping.wait(LISTEN_WAIT_S)
        if listener is not None:
            listener.close()

    def nudge(self) -> None:
        """Read the database at the next tick (this process just wrote, e.g. a create or a cancel)."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self._listener_thread is not None:
            await asyncio.to_thread(self._listener_thread.join, LISTEN_WAIT_S + 5.0)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _get(self, prediction_id: str) -> Prediction:
        pred = self.store.get(prediction_id)
        if pred is None:
            raise NotFound(f"prediction {prediction_id!r} not found")
        return pred

    async def wait(self, prediction_id: str, timeout_s: float) -> Prediction:
        """The prediction once terminal, or as it is when timeout_s has passed."""
        pred = self._get(prediction_id)
        if pred.terminal or timeout_s <= 0:
            return pred
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(timeout_s) if hasattr(asyncio, "timeout") else _timeout(timeout_s):
                async for pred in self.updates(prediction_id):
                    if pred.terminal:
                        return pred
        return self._get(prediction_id)

    async def updates(self, prediction_id: str) -> AsyncIterator[Prediction]:
        """The current state, then every change, ending after a terminal state."""
        queue: asyncio.Queue[Prediction] = asyncio.Queue()
        self._listeners.setdefault(prediction_id, set()).add(queue)
        try:
            pred = self._get(prediction_id)
            yield pred
            while not pred.terminal:
                try:
                    pred = await asyncio.wait_for(queue.get(), timeout=self.recheck_s)
                except asyncio.TimeoutError:
                    pred = self._get(prediction_id)  # belt and braces against a missed change
                yield pred
        finally:
            listeners = self._listeners.get(prediction_id)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    self._listeners.pop(prediction_id, None)

    @contextlib.contextmanager
    def subscription(self) -> Iterator[asyncio.Queue[Prediction]]:
        """Every new or changed prediction from now on, whichever API created it (the operator's page)."""
        queue: asyncio.Queue[Prediction] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def read(self, now: float, cancels: bool = True) -> list[Prediction]:
        """The database side of one watch tick: Cancel-After deadlines (when `cancels`: one is due), then every row
        changed after the cursor, in sequence order. Safe in a thread: only _watch, which awaits this, moves the
        cursor."""
        if cancels:
            for due in self.store.due_for_cancel(now):
                self.store.request_cancel(due, reason="canceled: Cancel-After deadline reached")
        changed = self.store.changes_after(self._cursor)
        if changed:
            self._cursor = max(p.change_seq or 0 for p in changed)
        return changed

    def _next_deadline(self) -> float:
        """The earliest Cancel-After deadline of the active predictions this feed has seen (wall clock)."""
        return min((p.cancel_at for p in self._seen.values() if p.cancel_at and not p.terminal
                    and not p.cancel_requested), default=math.inf)

    async def _watch(self) -> None:
        last_read = last_sweep = 0.0
        while True:
            try:
                now = time.monotonic()
                changed: list[Prediction] = []
                due = time.time() >= self._next_deadline() or now - last_sweep >= DEADLINE_SWEEP_S
                if self._wake.is_set() or self._heard.is_set() or self.poke() or due or \
                        now - last_read >= self.fallback_s:
                    self._wake.clear()
                    self._heard.clear()
                    last_read = now
                    last_sweep = now if due else last_sweep
                    # In a thread: a database waiting on a lock (or a network round trip) must not stall requests.
                    changed = await asyncio.to_thread(self.read, time.time(), due)
                    for pred in changed:
                        self.apply(pred)
                    for pid in [p.id for p in self._seen.values() if p.terminal]:
                        del self._seen[pid]  # no more changes can come
                self.on_tick(bool(changed))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the feed must survive a transient database error
                log.exception("prediction watch failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), WATCH_INTERVAL_S)

    def apply(self, pred: Prediction) -> None:
        """One changed row: wake its waiters and tell the handler (once per revision)."""
        prev = self._seen.get(pred.id)
        if prev is not None and prev.rev >= pred.rev:
            return
        self._seen[pred.id] = pred
        for queue in self._subscribers:
            queue.put_nowait(pred)
        if prev is None and pred.rev == 0:  # just created: not a change (no webhook, no waiter to wake)
            return
        for queue in self._listeners.get(pred.id, ()):
            queue.put_nowait(pred)
        self.on_change(prev, pred)


@contextlib.asynccontextmanager
async def _timeout(seconds: float) -> AsyncIterator[None]:
    """asyncio.timeout for Python 3.10."""
    task = asyncio.current_task()
    handle = asyncio.get_running_loop().call_later(seconds, task.cancel)  # type: ignore[union-attr]
    try:
        yield
    except asyncio.CancelledError as exc:
        raise asyncio.TimeoutError from exc
    finally:
        handle.cancel()
