"""Process helpers shared by the worker and the sequence-parallel ranks."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent_pid: int | None = None, interval_s: float = 0.5) -> None:
    """Exit this process once its parent is gone (even killed by SIGKILL), so no orphan keeps a GPU."""
    parent = parent_pid if parent_pid is not None else os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
