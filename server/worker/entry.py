"""The worker process's entry point, kept apart from the job runner so that the API process, which only starts
workers, never imports the render engine (and torch) itself."""

from __future__ import annotations

from typing import Any


def run_worker(*args: Any) -> None:
    """multiprocessing target: see runner.worker_main for the arguments."""
    # the runner imports the engine and torch: only the spawned worker process loads them
    from vace.server.worker.runner import worker_main

    worker_main(*args)
