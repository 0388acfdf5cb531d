"""Keeps one GPU worker process alive and reports the server's health state."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import queue
import threading
import time
import uuid
from typing import Any

from vace.server.store import Store
from vace.server.worker.runner import WorkerConfig, worker_main

log = logging.getLogger("vace.supervisor")

STARTING, READY, SETUP_FAILED = "STARTING", "READY", "SETUP_FAILED"
RESTART_DELAY_S = 1.0
STOP_GRACE_S = 3.0


class WorkerSupervisor:
    """Spawns the worker, notices when it dies (failing the job it held) and starts a new one."""

    def __init__(self, store: Store, config: WorkerConfig):
        self.store = store
        self.config = config
        self.ctx = multiprocessing.get_context("spawn")
        self.process: Any = None
        self.worker_id = ""
        self.state = STARTING
        self.error: str | None = None
        self.restarts = 0
        self.loaded: dict[str, Any] | None = None  # what the worker reported when ready (model, levers)
        self._events: Any = None
        self._stop: Any = None
        self._last_start = 0.0
        # poll() runs in a worker thread that outlives the cancelled supervise task at shutdown: the lock and
        # the flag keep it from replacing a worker that stop() just ended (and failing its requeued job).
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def pid(self) -> int | None:
        process = self.process  # read once: poll() may clear it between a check and the use
        return process.pid if process else None

    def start(self) -> None:
        self.worker_id = f"worker-{uuid.uuid4().hex[:12]}"
        self._events = self.ctx.Queue()
        self._stop = self.ctx.Event()
        config = dataclasses.replace(self.config, worker_id=self.worker_id)
        self.process = self.ctx.Process(target=worker_main, args=(config, self._events, self._stop),
                                        name=self.worker_id, daemon=not self.config.devices)
        # (a daemonic process may not have children: a sequence-parallel worker spawns its ranks)
        self.process.start()
        self._last_start = time.monotonic()
        self.state = STARTING
        log.info("started worker %s (pid %s)", self.worker_id, self.process.pid)

    def poll(self) -> None:
        """Read the worker's reports; replace it if it died. Call this often."""
        with self._lock:
            if self._stopping:
                return
            self.read_reports()
            self._replace_if_dead()

    def read_reports(self) -> None:
        """Take in what the worker reported (ready / setup failed) without waiting; /health calls this too."""
        while self._events is not None:
            try:
                kind, detail = self._events.get_nowait()
            except (queue.Empty, OSError, ValueError):
                break
            if kind == "ready":
                self.state, self.error, self.loaded = READY, None, detail
            elif kind == "setup_failed":
                self.state, self.error = SETUP_FAILED, detail

    def _replace_if_dead(self) -> None:
        if self.process is None or self.process.is_alive():
            return
        code = self.process.exitcode
        self.process = None
        failed = self.store.fail_held(
            f"the worker process died (exit code {code}) while running this prediction; it was not retried",
            owner=self.worker_id)
        if failed:
            log.error("worker %s died (exit code %s) running %s", self.worker_id, code, ", ".join(failed))
        if self.state == SETUP_FAILED:
            log.error("worker could not load its model: %s", self.error)
            return
        log.warning("worker %s exited with code %s; starting a new one", self.worker_id, code)
        self.restarts += 1
        wait = RESTART_DELAY_S - (time.monotonic() - self._last_start)
        if wait > 0:
            time.sleep(min(wait, RESTART_DELAY_S))
        self.start()

    def stop(self) -> None:
        """Stop the worker; a job it was running goes back to the queue."""
        with self._lock:
            self._stopping = True
            if self.process is not None:
                self._stop_process()

    def _stop_process(self) -> None:
        self._stop.set()
        self.process.join(0.5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process = None
        self.store.requeue_held(self.worker_id, "requeued: the server stopped while this prediction was running")
