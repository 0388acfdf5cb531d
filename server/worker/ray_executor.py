"""The `ray` executor (`vace serve --executor ray`): every GPU worker is a Ray actor anywhere in the cluster.

One actor per GPU (`num_gpus=1`), or with `--sequence-parallel N` one actor per placement group of N GPUs packed
on one node (STRICT_PACK) whose rank processes form the usual torch.distributed group. The API process keeps
the store: for each actor a feeder thread here claims a job, sends it to the actor and applies the events the
actor streams back (logs, progress, heartbeats, the final write with its output files), forwarding a cancel to
the actor. Ray restarts an actor whose node died on a healthy GPU, and the feeder kills (and so restarts) one
that sent nothing for --worker-timeout (a running actor beats every second); the job it was running is settled
like a lost local worker's (settle_lost). Any other fault while a job runs (an input gone, an output that cannot
be stored) cancels it on the actor, waits for the actor to end it and fails it saying why: a slot hands its actor
one job at a time. Same interface as the local supervisors (start / poll / read_reports / stop, state, workers).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import logging
import mimetypes
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from vace.pipelines.job.request import RequestError, with_media
from vace.server.metrics import WorkerState
from vace.server.storage import MISSING, Storage, output_key
from vace.server.store import FAILED, Prediction, Store
from vace.server.store_listen import QUEUE_CHANNEL
from vace.server.worker.config import WorkerConfig
from vace.server.worker.job_log import JobLog
from vace.server.worker.store_writes import StoreWrites
from vace.server.worker.supervisor import READY, SETUP_FAILED, STARTING

log = logging.getLogger("vace.ray")

IDLE_WAIT_S = 2.0  # longest wait for new work between claims (PostgreSQL wakes the feeders at once)
CANCEL_POLL_S = 0.1  # how often a running job's cancel flag is read: well inside one denoising step
READY_WAIT_S = 1.0
UNANSWERED_S = 10.0  # a ready actor that answers nothing for this long is shown RESTARTING (a slow answer is not)
RESTARTING = "RESTARTING"


def driver_ip(address: str) -> str | None:
    """A cluster on a loopback address is this machine: join it on that address too (else Ray picks the host's
    network address, which such a cluster does not listen on). Ray itself replaces 127.0.0.1 and localhost by the
    network address, so a one-machine cluster uses another loopback address (`--node-ip-address 127.0.0.2`)."""
    host = address.rsplit(":", 1)[0]
    try:
        return host if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


def inline_local_media(job: Prediction, storage: Storage) -> Prediction:
    """The job with its references to the server's own files (uploads, outputs: in the data dir or the bucket of
    --storage) replaced by data: URIs, so the actor needs no access to them; Ray carries large arguments through
    its object store."""
    stored = job.job

    def inline(ref: str, field: str) -> str:
        rel = storage.rel_of(ref)
        if rel is None:
            return ref
        try:
            data = storage.read_bytes(rel)
        except FileNotFoundError:  # removed since the job was created
            raise RequestError(field, MISSING) from None
        kind = mimetypes.guess_type(rel)[0] or "application/octet-stream"
        return f"data:{kind};base64,{base64.b64encode(data).decode()}"

    request = with_media(stored.request, inline)
    return dataclasses.replace(job, request=dataclasses.replace(stored, request=request).to_dict())


class _Slot:
    """One actor and the feeder thread that hands it jobs from the store."""

    def __init__(self, executor: RayExecutor, index: int):
        self.executor = executor
        self.index = index
        self.worker_id = f"ray-{uuid.uuid4().hex[:8]}-{index}"
        self.actor: Any = None
        self.state = STARTING
        self.error: str | None = None
        self.where: dict[str, Any] | None = None  # the actor's describe(): node, GPUs, model
        self.job: str | None = None
        self.restarts = 0
        self.unanswered_since: float | None = None
        self.writes = StoreWrites(executor.store)  # as the local worker writes: a failed progress write is dropped,
        # the final write retried until the store takes it
        self.thread = threading.Thread(target=self._feed, name=self.worker_id, daemon=True)

    def start(self) -> None:
        self.actor = self.executor.new_actor()
        self.thread.start()

    def _ready(self) -> bool:
        """Whether the actor is up (Ray is still placing or restarting it when not)."""
        import ray  # the [ray] extra; the executor only runs when it is installed

        try:
            where = ray.get(self.actor.describe.remote(), timeout=READY_WAIT_S)
        except ray.exceptions.GetTimeoutError:  # being placed, or re-placed after its node was lost; or just busy
            now = time.monotonic()
            self.unanswered_since = self.unanswered_since or now
            if self.state == READY and now - self.unanswered_since >= UNANSWERED_S:
                self.state = RESTARTING
            return False
        except ray.exceptions.RayError as exc:
            if isinstance(exc, ray.exceptions.RayActorError) and exc.actor_init_failed:  # the model's load failed
                self.state, self.error = SETUP_FAILED, _actor_error(exc)
                return False
            # still being placed, or being restarted after its node was lost
            if self.state == READY:
                self.state = RESTARTING
            return False
        if self.where is not None and (where["node"], where["pid"]) != (self.where["node"], self.where["pid"]):
            self.restarts += 1
            log.warning("worker %s restarted on node %s", self.worker_id, where["node_ip"])
        self.where, self.state, self.error, self.unanswered_since = where, READY, None, None
        return True

    def _feed(self) -> None:
        executor = self.executor
        listener = executor.store.listener(QUEUE_CHANNEL, poll_s=executor.idle_poll_s)
        try:
            while not executor.stopping.is_set():
                try:
                    self._feed_once(listener)
                except Exception:  # noqa: BLE001 - a cluster fault between jobs (a job's own faults settle it in
                    # _run) must not end the feeder: this slot takes jobs again once the fault clears
                    log.exception("feeder %s failed between jobs; retrying", self.worker_id)
                    executor.stopping.wait(READY_WAIT_S)
        finally:
            listener.close()

    def _feed_once(self, listener: Any) -> None:
        executor = self.executor
        if self.state == SETUP_FAILED or not self._ready():
            executor.stopping.wait(READY_WAIT_S)
            return
        job = self.writes.claim(self.worker_id, executor.config.lease_s, models=list(executor.models))
        if job is None:
            listener.wait(IDLE_WAIT_S)
            return
        executor.changed.set()
        self.job = job.id
        try:
            self._run(job)
        finally:
            self.job = None
            executor.changed.set()

    def _run(self, job: Prediction) -> None:
        """Hand the job to the actor and apply what it streams back. Whatever goes wrong, the job is settled here
        and the actor has ended it before the slot takes another."""
        import ray  # the [ray] extra

        owner, where = self.worker_id, self.where or {}
        node = f"on node {where.get('node_ip')} ({where.get('node')})"
        progress = _Progress(job)
        try:
            # The job's log opens with where it runs (the runner keeps the lines a job arrives with).
            sent = dataclasses.replace(inline_local_media(job, self.executor.storage),
                                       logs=job.logs + f"ray worker {owner} {node}, GPUs {where.get('gpus')}\n")
        except RequestError as exc:  # an uploaded input removed since the job was created: as the runner says it
            self._fail(job, progress, f"invalid input: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - the storage could not be read
            log.warning("prediction %s could not be handed to %s: %s", job.id, owner, exc)
            self._fail(job, progress, f"the server could not read this prediction's inputs: {_named(exc)}")
            return
        finished = threading.Event()
        canceler = threading.Thread(target=self._forward_cancel, args=(job.id, finished), daemon=True)
        try:
            stream = self.actor.run.remote(sent, self.executor.take_test_stop())
            canceler.start()
            try:
                for event in self._events(stream):
                    self._apply(job, event, progress)
            except (ray.exceptions.RayError, _Silent):
                raise
            except Exception as exc:  # noqa: BLE001 - applying an event failed (e.g. storing an output file)
                log.exception("prediction %s: applying %s's events failed", job.id, owner)
                self.actor.cancel.remote(job.id)
                for _ in self._events(stream):  # the actor ends the job before this slot hands it another
                    pass
                self._fail(job, progress, f"the server could not take this prediction's result from its Ray "
                                          f"worker: {_named(exc)}")
        except ray.exceptions.RayError as exc:
            if self.executor.stopping.is_set():  # stop() ended the actor: the job goes back to the queue
                return
            self.state = RESTARTING  # until the actor answers again (Ray restarts it, on another node if need be)
            self.writes.settle_lost(f"the Ray worker {owner} {node} was lost ({type(exc).__name__})", owner)
        except _Silent as exc:
            log.error("Ray worker %s %s sent nothing for %.0f s: killing it (Ray restarts it)", owner, node,
                      exc.seconds)
            ray.kill(self.actor, no_restart=False)
            self.state = RESTARTING
            self.writes.settle_lost(f"the Ray worker {owner} {node} stopped responding (nothing from it for "
                                    f"{exc.seconds:.0f} s)", owner)
        finally:
            finished.set()

    def _events(self, stream: Any) -> Iterator[tuple]:
        """The actor's events until its stream ends; _Silent when none comes for --worker-timeout (the actor
        beats every second while it runs a job)."""
        import ray  # the [ray] extra

        timeout = self.executor.config.settings.worker_timeout_s
        while True:
            ready, _ = ray.wait([stream], timeout=timeout)
            if not ready and not stream.is_finished():
                raise _Silent(timeout)
            try:
                ref = next(stream)
            except StopIteration:
                return
            yield ray.get(ref)

    def _apply(self, job: Prediction, event: tuple, progress: _Progress) -> None:
        writes, owner = self.writes, self.worker_id
        if event[0] == "report":
            progress.update(event[1])
            if not writes.report(job.id, owner, **event[1]):  # the job was taken away: stop rendering
                self.actor.cancel.remote(job.id)
            self.executor.changed.set()
        elif event[0] == "heartbeat":
            writes.heartbeat(job.id, owner, self.executor.config.lease_s)
        elif event[0] == "finish":
            _, status, values, files = event
            self._finish(job, status, values, files)

    def _finish(self, job: Prediction, status: str, values: dict[str, Any], files: dict[str, bytes]) -> None:
        for name, data in files.items():
            if not name.startswith(job.id) or (key := output_key(name)) is None:
                continue  # only the job's own outputs, only into the outputs dir
            self.executor.storage.put_bytes(key, data)
        values["metrics"] = {**(values.get("metrics") or {}), "worker": self._worker_metrics()}
        self.writes.finish(job.id, self.worker_id, status, **values)

    def _fail(self, job: Prediction, progress: _Progress, message: str) -> None:
        """The job fails with `message`, its log (as far as the actor had reported it) ending with it."""
        logs = JobLog(progress.logs, progress.log_times, job.updated_at)
        logs.append(message)
        self.writes.finish(job.id, self.worker_id, FAILED, error=message, **logs.fields(),
                           metrics={"worker": self._worker_metrics()})

    def _worker_metrics(self) -> dict[str, Any]:
        where = self.where or {}
        return {"node": where.get("node"), "node_ip": where.get("node_ip"), "gpus": where.get("gpus"),
                "id": self.worker_id}

    def _forward_cancel(self, prediction_id: str, finished: threading.Event) -> None:
        """Read the job's cancel flag until it ends; pass a cancel on to the actor (checked at every step)."""
        while not finished.wait(CANCEL_POLL_S):
            try:
                if self.executor.store.cancel_requested(prediction_id):
                    self.actor.cancel.remote(prediction_id)
                    return
            except Exception:  # noqa: BLE001 - read again at the next poll
                log.warning("cannot read %s's cancel flag", prediction_id, exc_info=True)

    def describe(self) -> dict[str, Any]:
        where = self.where or {}
        return {"id": self.worker_id, "state": self.state, "node": where.get("node"),
                "node_ip": where.get("node_ip"), "pid": where.get("pid"), "gpus": where.get("gpus"),
                "devices": where.get("devices"), "job": self.job, "restarts": self.restarts, "error": self.error}


class _Silent(Exception):
    """The actor sent nothing for --worker-timeout: its process is stopped or hung."""

    def __init__(self, seconds: float):
        super().__init__(f"nothing for {seconds:.0f} s")
        self.seconds = seconds


class _Progress:
    """The job's log as far as its actor has reported it (a job the driver fails keeps it)."""

    def __init__(self, job: Prediction):
        self.logs, self.log_times = job.logs, job.log_times

    def update(self, values: dict[str, Any]) -> None:
        self.logs = values.get("logs", self.logs)
        self.log_times = values.get("log_times", self.log_times)


def _named(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _actor_error(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(exc).__name__)


class RayExecutor:
    """Places the GPU workers on a Ray cluster and feeds them from the store."""

    def __init__(self, store: Store, config: WorkerConfig, address: str, storage: Storage):
        self.store = store
        self.config = config
        self.address = address
        self.models = config.models
        self.storage = storage  # the server's (uploads are read here, the actors' outputs written here)
        self.group = max(1, config.settings.sequence_parallel)
        self.idle_poll_s = 0.1
        self.stopping = threading.Event()
        self.changed = threading.Event()  # a feeder wrote a job's state: the change feed should read
        self.joined = threading.Event()
        self.join_error: str | None = None
        self.slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._test_stop = config.test_stop_at_step  # the fault-test hook, for the first job handed out only

    def start(self) -> None:
        """Join the cluster and place the workers, in a thread: the API answers (STARTING) meanwhile."""
        threading.Thread(target=self._join, name="ray-join", daemon=True).start()

    def _join(self) -> None:
        try:
            import ray  # the [ray] extra
        except ImportError:
            self.join_error = "--executor ray needs Ray: pip install 'vace-server[ray]'"
            log.error(self.join_error)
            return
        try:
            ray.init(address=self.address, _node_ip_address=driver_ip(self.address), namespace="vace",
                     log_to_driver=False, configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - reported by /health as SETUP_FAILED
            log.error("could not join the Ray cluster at %s: %s", self.address, exc)
            self.join_error = f"could not join the Ray cluster at {self.address}: {exc}"
            return
        self.joined.set()
        self._grow()

    def _gpu_slots(self) -> int:
        """The workers the live nodes hold: a group's GPUs must all be on one node."""
        import ray  # the [ray] extra

        return sum(int(node["Resources"].get("GPU", 0) // self.group) for node in ray.nodes() if node["Alive"])

    def _grow(self) -> None:
        """One slot per GPU (or group of GPUs) the cluster offers now; never fewer than one."""
        with self._lock:
            while len(self.slots) < max(1, self._gpu_slots()) and not self.stopping.is_set():
                slot = _Slot(self, len(self.slots))
                self.slots.append(slot)
                slot.start()

    def take_test_stop(self) -> int | None:
        """The fault-test hook's step for the job being handed out: the first one only."""
        with self._lock:
            step, self._test_stop = self._test_stop, None
        return step

    def new_actor(self) -> Any:
        import ray  # the [ray] extra
        from ray.util.placement_group import placement_group  # part of ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # part of ray

        options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0, "max_concurrency": 2}
        if self.group > 1:  # the group's N GPUs on one node: its ranks talk over the node's own links
            group = placement_group([{"GPU": self.group, "CPU": 1}], strategy="STRICT_PACK")
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=group,
                                                                              placement_group_bundle_index=0)
        # the actor class holds the engine and torch: loaded by the driver only when it starts actors
        from vace.server.worker.ray_actor import GpuWorker

        config = dataclasses.replace(self.config, test_stop_at_step=None)  # the hook travels with its job instead
        return ray.remote(GpuWorker).options(num_gpus=self.group, **options).remote(config, self.group)

    # ---- the supervisor interface the app uses -----------------------------------------------------------------

    def poll(self) -> None:
        """A grown cluster gets more workers (a shrunk one keeps its actors pending until GPUs return)."""
        if self.joined.is_set():
            self._grow()

    def read_reports(self) -> None:
        pass  # the feeder threads keep each slot's state current

    def wake(self) -> None:
        pass  # the slots' feeder threads wait on the store's own announcements

    def take_changed(self) -> bool:
        """Whether a feeder wrote a job's state since the last call (and clear the flag)."""
        if self.changed.is_set():
            self.changed.clear()
            return True
        return False

    queries = 0  # the actors' store statements are not counted here

    @property
    def health(self) -> tuple[str, str | None]:
        return self.state, self.error

    def begin_stop(self) -> None:
        """Hand out no more jobs."""
        self.stopping.set()

    def stop(self, drain_s: float = 0.0) -> None:
        """End the actors; a job one was running goes back to the queue (as with the local executor; the actors
        are not drained)."""
        import ray  # the [ray] extra

        self.stopping.set()
        if not self.joined.is_set():
            return
        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)
        for slot in self.slots:
            slot.thread.join(READY_WAIT_S + IDLE_WAIT_S + 1.0)
            self.store.requeue_held(slot.worker_id, "requeued: the server stopped while this prediction was running")
        ray.shutdown()

    @property
    def state(self) -> str:
        states = {slot.state for slot in self.slots}
        if READY in states:
            return READY
        return SETUP_FAILED if self.join_error or states == {SETUP_FAILED} else STARTING

    @property
    def error(self) -> str | None:
        return self.join_error or next((slot.error for slot in self.slots if slot.error), None)

    @property
    def restarts(self) -> int:
        return sum(slot.restarts for slot in self.slots)

    @property
    def pid(self) -> int | None:
        return None  # the workers are Ray actors on the cluster's nodes

    @property
    def loaded(self) -> dict[str, Any] | None:
        where = next((slot.where for slot in self.slots if slot.where), None)
        return {k: where[k] for k in ("model", "levers", "offload")} if where else None

    @property
    def workers(self) -> list[dict[str, Any]]:
        return [slot.describe() for slot in self.slots]

    def states(self) -> list[WorkerState]:
        """The workers as /metrics reports them; a device is `<node address>/gpu<Ray's GPU id on that node>` (or
        `<node address>/<device>` on a node without GPUs)."""
        states = []
        for slot in self.slots:
            where = slot.where or {}
            ip = where.get("node_ip")
            devices = ([f"{ip}/gpu{g}" for g in where.get("gpus") or []]
                       or [f"{ip}/{d}" for d in where.get("devices") or ["?"]])
            states.append(WorkerState(slot.worker_id, devices, up=slot.state == READY, busy=slot.job is not None))
        return states
