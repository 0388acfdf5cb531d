"""Keeps one GPU worker process alive and reports the server's health state.

A worker that dies is replaced; so is one that stops heartbeating (a SIGSTOP, a hung GPU kernel, a deadlock):
past `--worker-timeout` seconds of silence it is killed, the job it held is failed with a message saying so,
and a fresh worker starts. A store that cannot be written (full or read-only disk) never stops supervision:
what could not be recorded is retried on every poll, and /health says why the server is not READY."""

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
from vace.server.worker.entry import run_worker
from vace.server.worker.liveness import Liveness
from vace.server.worker.lost import settle_lost

log = logging.getLogger("vace.supervisor")

STARTING, READY, DEGRADED, SETUP_FAILED = "STARTING", "READY", "DEGRADED", "SETUP_FAILED"
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
        self.reason: str | None = None  # why the state is not READY, for /health
        self.restarts = 0
        self.loaded: dict[str, Any] | None = None  # what the worker reported when ready (model, levers)
        self.liveness = Liveness(self.ctx)
        self.store_error: str | None = None  # the worker's last failed store write, until one succeeds
        self._events: Any = None
        self._stop: Any = None
        self._last_start = 0.0
        self._hung_for: float | None = None
        self._unsettled: list[tuple[str, str]] = []  # (worker id, cause): held jobs still to be settled
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
        self._hung_for = None
        self.liveness.reset()
        # The fault-test hook stops only the first worker: its replacement must be able to finish the queue.
        config = dataclasses.replace(self.config, worker_id=self.worker_id,
                                     test_stop_at_step=None if self.restarts else self.config.test_stop_at_step)
        self.process = self.ctx.Process(target=run_worker, args=(config, self._events, self._stop, self.liveness),
                                        name=self.worker_id, daemon=not self.config.devices)
        # (a daemonic process may not have children: a sequence-parallel worker spawns its ranks)
        self.process.start()
        self._last_start = time.monotonic()
        self.state = DEGRADED if self.restarts else STARTING
        log.info("started worker %s (pid %s)", self.worker_id, self.process.pid)

    def wake(self) -> None:
        """New work is queued: the worker claims it now rather than at its next fallback poll."""
        self.liveness.wake()

    def take_changed(self) -> bool:
        """Whether the worker wrote to the store since the last call (the change feed's cue to read)."""
        return self.liveness.take_changed()

    @property
    def queries(self) -> int:
        """Store statements the current worker has sent."""
        return self.liveness.queries

    def poll(self) -> None:
        """Read the worker's reports; replace it if it died or hung; record what earlier polls could not. Call
        this often; it never raises for a store error."""
        with self._lock:
            if self._stopping:
                return
            self.read_reports()
            self._kill_if_hung()
            self._replace_if_dead()
            self._settle()

    @property
    def health(self) -> tuple[str, str | None]:
        """(state, why it is not READY) for /health."""
        if self.state == READY and self.store_error:
            return DEGRADED, f"the worker cannot write to the store: {self.store_error}"
        if self.state == SETUP_FAILED:
            return SETUP_FAILED, self.error
        return self.state, self.reason

    def read_reports(self) -> None:
        """Take in what the worker reported (ready / setup failed) without waiting; /health calls this too."""
        while self._events is not None:
            try:
                kind, detail = self._events.get_nowait()
            except (queue.Empty, OSError, ValueError):
                break
            if kind == "ready":
                self.state, self.error, self.reason, self.loaded = READY, None, None, detail
            elif kind == "setup_failed":
                self.state, self.error, self.reason = SETUP_FAILED, detail, f"the model did not load: {detail}"
            elif kind == "store":  # None once a write succeeds again
                self.store_error = detail

    def _kill_if_hung(self) -> None:
        """SIGKILL a worker silent past the timeout (a stopped process dies too); _replace_if_dead follows."""
        if self.process is None or self.state != READY or self._hung_for is not None:
            return
        silent = self.liveness.silent_for()
        if silent <= self.config.settings.worker_timeout_s:
            return
        self._hung_for = silent
        log.error("worker %s (pid %s) sent no heartbeat for %.0f s: killing and replacing it", self.worker_id,
                  self.process.pid, silent)
        self.process.kill()
        self.process.join(STOP_GRACE_S)

    def _replace_if_dead(self) -> None:
        if self.process is None or self.process.is_alive():
            return
        code = self.process.exitcode
        if self._hung_for is not None:
            cause = f"the worker stopped responding (no heartbeat for {self._hung_for:.0f} s)"
        else:
            cause = f"the worker process died (exit code {code})"
        self.process = None
        # Recorded by _settle, after the replacement has started: a store that cannot be written must not keep
        # the server without a worker.
        self._unsettled.append((self.worker_id, cause))
        if self.state == SETUP_FAILED:
            log.error("worker could not load its model: %s", self.error)
            return
        log.warning("%s; starting a new one", cause)
        self.restarts += 1
        self.reason = f"{cause}; a new worker is starting"
        wait = RESTART_DELAY_S - (time.monotonic() - self._last_start)
        if wait > 0:
            time.sleep(min(wait, RESTART_DELAY_S))
        self.start()

    def _settle(self) -> None:
        """Requeue or fail the jobs that replaced workers held, as far as the store lets us now."""
        while self._unsettled:
            worker_id, cause = self._unsettled[0]
            try:
                settle_lost(self.store, cause, owner=worker_id)
            except Exception as exc:  # noqa: BLE001 - retried on the next poll
                log.warning("cannot record the end of %s's job yet: %s", worker_id, exc)
                return
            self._unsettled.pop(0)

    def begin_stop(self) -> None:
        """Stop taking jobs: the worker finishes the one it runs, then exits (the graceful drain)."""
        with self._lock:
            self._stopping = True
            if self._stop is not None:
                self._stop.set()
                self.liveness.wake()  # out of its idle wait at once

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop the worker, giving a running job `drain_s` seconds to finish; past that the worker is ended and
        the job goes back to the queue."""
        self.begin_stop()
        with self._lock:
            if self.process is not None:
                self._stop_process(drain_s)
            self._release_shared()

    def _release_shared(self) -> None:
        """Let go of what the worker shared with us, so that their named semaphores are removed now. uvicorn ends
        the process by raising the stop signal again, which skips the interpreter's exit clean-up: the resource
        tracker then reported them leaked."""
        if self._events is not None:
            self._events.close()
            self._events.join_thread()
        self._events = self._stop = None
        self.liveness.close()

    def _stop_process(self, drain_s: float) -> None:
        self.process.join(max(drain_s, 0.5))
        if self.process.is_alive():
            log.warning("worker %s still busy after the %.0f s drain: stopping it and requeueing its job",
                        self.worker_id, drain_s)
            self.process.terminate()
            self.process.join(STOP_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process = None
        try:
            self.store.requeue_held(self.worker_id, "requeued: the server stopped while this prediction was running")
        except Exception:  # noqa: BLE001 - the next start fails it as interrupted (single host) or its lease ends
            log.exception("could not requeue %s's job", self.worker_id)


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

    def wake(self) -> None:
        for member in self.members:
            member.wake()

    def take_changed(self) -> bool:
        return any([m.liveness.take_changed() for m in self.members])  # a list: every flag cleared

    @property
    def queries(self) -> int:
        return sum(m.queries for m in self.members)

    def begin_stop(self) -> None:
        for member in self.members:
            member.begin_stop()

    def stop(self, drain_s: float = 0.0) -> None:
        self.begin_stop()  # all drain at once
        for member in self.members:
            member.stop(drain_s)

    @property
    def health(self) -> tuple[str, str | None]:
        """SETUP_FAILED if any worker failed to load; READY when every worker is; else the first reason."""
        states = [m.health for m in self.members]
        for wanted in (SETUP_FAILED, DEGRADED, STARTING):
            for state, reason in states:
                if state == wanted:
                    return state, reason
        return READY, None

    @property
    def state(self) -> str:
        return self.health[0]

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
        return [{"devices": list(m.config.devices or (m.config.device,)), "state": m.health[0],
                 "reason": m.health[1], "pid": m.pid, "restarts": m.restarts, "loaded": m.loaded}
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
