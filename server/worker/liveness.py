"""What a supervisor and its worker process share, outside the database: the worker's heartbeat (the last time
it showed it was making progress), a wake-up for new work, and a count of the worker's store writes (so the API's
change feed reads the database when something changed, not on a fast timer).

Nothing the API side calls may block on the worker: a worker can be stopped (SIGSTOP, a hung driver) at any
instruction. So the wake-up is a semaphore (a release never waits; a multiprocessing Event's set() waits for a
stopped waiter to wake, forever) and the write count is a plain shared value with one writer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

BEAT_S = 1.0  # an idle worker's heartbeat period


def wait_beating(wait: Callable[[float], Any], beat: Callable[[], None] | None, timeout_s: float,
                 stop: Any = None) -> None:
    """Wait until `wait(seconds)` returns something true (woken for new work), for at most `timeout_s`, calling
    `beat` every BEAT_S meanwhile and returning within BEAT_S after `stop` (an Event) is set."""
    deadline = time.monotonic() + timeout_s
    while True:
        if beat is not None:
            beat()
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop.is_set()):
            return
        if wait(min(left, BEAT_S)):
            if beat is not None:
                beat()
            return


class Liveness:
    """Made by the supervisor from its multiprocessing context and handed to the worker at spawn."""

    def __init__(self, ctx: Any):
        self._beat = ctx.Value("d", time.time(), lock=False)  # one aligned double: written whole
        self._wake = ctx.Semaphore(0)
        self._writes = ctx.Value("q", 0, lock=False)  # the worker's landed store writes (one writer)
        self._writes_seen = 0  # API side: the count at the last take_changed()
        self._queries = ctx.Value("q", 0, lock=False)  # the worker's store statements (one writer)

    # ---- worker side -------------------------------------------------------------------------------------------

    def beat(self) -> None:
        """I am alive and getting on: called between denoising steps, between job phases and while idle."""
        self._beat.value = time.time()

    def wait_for_work(self, timeout_s: float, stop: Any = None) -> None:
        """Sleep until woken for new work (or `timeout_s`, the fallback poll), heartbeating every second."""
        wait_beating(self._woken, self.beat, timeout_s, stop)

    def _woken(self, timeout_s: float) -> bool:
        if not self._wake.acquire(timeout=timeout_s):
            return False
        while self._wake.acquire(block=False):  # several wake-ups: one claim covers them all
            pass
        return True

    def changed(self) -> None:
        """A store write happened: the change feed should read."""
        self._writes.value += 1

    def count_queries(self, total: int) -> None:
        """The worker's store has sent `total` statements so far."""
        self._queries.value = total

    # ---- supervisor / API side ---------------------------------------------------------------------------------

    def silent_for(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat."""
        return (time.time() if now is None else now) - self._beat.value

    def wake(self) -> None:
        wake = self._wake  # read once: close() may run meanwhile
        if wake is not None:
            wake.release()

    def close(self) -> None:
        """The worker is gone for good: drop the wake-up semaphore (its name is unlinked when it is collected)."""
        self._wake = None

    def take_changed(self) -> bool:
        """Whether the worker wrote since the last call."""
        writes = self._writes.value
        if writes != self._writes_seen:
            self._writes_seen = writes
            return True
        return False

    @property
    def queries(self) -> int:
        return int(self._queries.value)

    def reset(self) -> None:
        """A fresh worker starts with a fresh heartbeat."""
        self._beat.value = time.time()
        self._writes_seen = self._writes.value
