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

from vace.server.metrics import WorkerState
from vace.server.store import Store
from vace.server.worker.config import WorkerConfig
from vace.server.worker.devices import worker_configs, worker_device_sets
from vace.server.worker.runner import worker_main

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


class SupervisorSet:
    """One WorkerSupervisor per worker behind the single-supervisor interface the app uses."""

    def __init__(self, store: Store, configs: list[WorkerConfig]):
        self.members = [WorkerSupervisor(store, config) for config in configs]

    def start(self) -> None:
        for member in self.members:
            member.start()

    def poll(self) -> None:
        for member in self.members:
            member.poll()

    def read_reports(self) -> None:
        for member in self.members:
            member.read_reports()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    @property
    def state(self) -> str:
        states = {m.state for m in self.members}
        if SETUP_FAILED in states:
            return SETUP_FAILED
        return READY if states == {READY} else STARTING

    @property
    def error(self) -> str | None:
        return next((m.error for m in self.members if m.error), None)

    @property
    def restarts(self) -> int:
        return sum(m.restarts for m in self.members)

    @property
    def pid(self) -> int | None:
        return self.members[0].pid

    @property
    def workers(self) -> list[dict[str, Any]]:
        return [{"devices": list(m.config.devices or (m.config.device,)), "state": m.state,
                 "pid": m.pid, "restarts": m.restarts, "loaded": m.loaded}
                for m in self.members]


def make_supervisor(store: Store, config: WorkerConfig) -> WorkerSupervisor | SupervisorSet:
    """The plain WorkerSupervisor for one single-device worker, else a SupervisorSet."""
    s = config.settings
    sets = worker_device_sets(s.device, s.gpus, s.sequence_parallel)
    if sets == [(s.device,)]:
        return WorkerSupervisor(store, dataclasses.replace(config, device=s.device))
    return SupervisorSet(store, worker_configs(config, sets))


def worker_states(supervisor: WorkerSupervisor | SupervisorSet, busy_owners: set[str]) -> list[WorkerState]:
    """Each started worker as /metrics reports it: up while loaded and alive, busy while it holds a job."""
    members = supervisor.members if isinstance(supervisor, SupervisorSet) else [supervisor]
    return [WorkerState(m.worker_id, list(m.config.devices) or [str((m.loaded or {}).get("device") or m.config.device)],
                        up=m.state == READY and m.pid is not None, busy=m.worker_id in busy_owners)
            for m in members if m.worker_id]
