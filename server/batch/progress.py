"""One progress bar for a batch: rows done of all, failed and running counts, ETA from the measured row rate,
and the step of the job that moved last."""

from __future__ import annotations

import re
import sys
import threading
from typing import Any

from tqdm import tqdm

_STEP = re.compile(r"denoising step (\d+)/(\d+)")


def step_of(logs: str | None) -> tuple[int, int] | None:
    """The last `denoising step i/N` in a prediction's logs."""
    found = _STEP.findall(logs or "")
    return (int(found[-1][0]), int(found[-1][1])) if found else None


class BatchProgress:
    """Thread-safe; the bar's ETA counts only rows finished in this run (resumed rows start it at `done`)."""

    def __init__(self, total: int, done: int = 0, failed: int = 0, enabled: bool = True, stream: Any = None):
        self.done, self.failed = done, failed
        self.running: dict[str, str] = {}
        self.current = ""
        self._lock = threading.Lock()
        self.bar = tqdm(total=total, initial=done + failed, unit="video", desc="batch", disable=not enabled,
                        file=stream or sys.stderr, dynamic_ncols=True)
        self._refresh()

    def started(self, row_id: str) -> None:
        with self._lock:
            self.running[row_id] = "queued"
            self._refresh()

    def step(self, row_id: str, text: str) -> None:
        """What a running row is doing now (e.g. `step 3/20`); it becomes the bar's current job."""
        with self._lock:
            if self.running.get(row_id) != text:
                self.running[row_id] = text
                self.current = row_id
                self._refresh()

    def finished(self, row_id: str, ok: bool) -> None:
        with self._lock:
            self.running.pop(row_id, None)
            if ok:
                self.done += 1
            else:
                self.failed += 1
            self.bar.update(1)
            self._refresh()

    def left(self, row_id: str) -> None:
        """A row that stopped without an outcome (left for the next run)."""
        with self._lock:
            self.running.pop(row_id, None)
            self._refresh()

    def close(self) -> None:
        self.bar.close()

    def _refresh(self) -> None:
        postfix = f"done {self.done}, failed {self.failed}, running {len(self.running)}"
        if self.current in self.running:
            postfix += f" | {self.current}: {self.running[self.current]}"
        self.bar.set_postfix_str(postfix, refresh=True)
