"""Host memory of a benchmark: this process and its children (a render group's ranks), sampled while it runs.

The figure that says whether a run fits is the summed Pss (proportional set size) at its peak: a page shared by
two processes, such as a weight file both ranks map, counts half in each, so the sum is the physical memory the
process tree holds, mapped weights included. Rss counts a shared page in full in every process that maps it;
anonymous memory is what the processes allocated themselves. Linux /proc only: elsewhere the figures are None.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

GIB = 2**30
FIELDS = ("Rss", "Pss", "Anonymous")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc/PID/task/TID/children)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue += [int(child) for child in children.read_text().split()]
            except OSError:  # the process or thread ended meanwhile
                continue
    return pids


def rollup(pid: int) -> dict[str, int] | None:
    """Rss, Pss and Anonymous bytes of one process (/proc/PID/smaps_rollup), None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0]) * 1024
    return values if len(values) == len(FIELDS) else None


class HostMemory:
    """Context manager sampling the process tree every `interval_s` in a thread; report() gives the peaks."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.available = Path(f"/proc/{os.getpid()}/smaps_rollup").exists()
        self.peak_pss = self.peak_anonymous = 0
        self.peak_processes = 0
        self.peak_rss: dict[int, int] = {}  # per process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-memory", daemon=True)

    def sample(self) -> None:
        if not self.available:
            return
        rows = {pid: row for pid in process_tree(os.getpid()) if (row := rollup(pid))}
        self.peak_pss = max(self.peak_pss, sum(row["Pss"] for row in rows.values()))
        self.peak_anonymous = max(self.peak_anonymous, sum(row["Anonymous"] for row in rows.values()))
        self.peak_processes = max(self.peak_processes, len(rows))
        for pid, row in rows.items():
            self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), row["Rss"])

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> HostMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def report(self) -> dict[str, Any]:
        """Peaks in GiB: summed Pss and anonymous memory of the tree, and each process's own Rss."""
        if not self.available:
            return {"peak_pss_gib": None, "peak_anonymous_gib": None, "peak_rss_gib_per_process": None,
                    "sampled_every_s": self.interval_s}
        return {"peak_pss_gib": self.peak_pss / GIB, "peak_anonymous_gib": self.peak_anonymous / GIB,
                "peak_processes": self.peak_processes,
                "peak_rss_gib_per_process": {str(pid): rss / GIB for pid, rss in sorted(self.peak_rss.items())},
                "sampled_every_s": self.interval_s}
