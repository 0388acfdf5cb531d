"""A running job's log: its lines and the time each was written (fal reports a timestamp per line)."""

from __future__ import annotations

import time
from typing import Any


class JobLog:
    """Lines appended by the worker, each stamped with the time it was appended."""

    def __init__(self, previous: str = "", previous_times: list[float] | None = None, since: float = 0.0):
        """Start from what the prediction already logged (e.g. "requeued: ..."); its lines keep their times,
        or `since` when the store appended them without one."""
        old = [line for line in previous.splitlines() if line]
        times = list(previous_times or [])[:len(old)]
        self.lines = old
        self.times = times + [since] * (len(old) - len(times))

    def append(self, text: str) -> None:
        now = time.time()
        for line in text.splitlines():
            if line:
                self.lines.append(line)
                self.times.append(now)

    def fields(self) -> dict[str, Any]:
        """The store columns: `logs` (one line each, newline-terminated) and `log_times`."""
        return {"logs": "".join(line + "\n" for line in self.lines), "log_times": list(self.times)}
