"""What runs on a Ray node: one GPU worker (a model pool and the same JobRunner as the local executor) whose
store writes travel back to the API process as a stream of events instead of going to a database.

Nothing here needs the API's filesystem: inputs arrive inside the job (the driver inlines the server's own
files as data: URIs) or are fetched under the same URL policy, and each output file travels back with the
job's final event.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vace.server.store import Prediction
from vace.server.worker.config import WorkerConfig
from vace.server.worker.devices import worker_device_sets
from vace.server.worker.liveness import BEAT_S
from vace.server.worker.pool import ModelPool
from vace.server.worker.runner import JobRunner

EVENT_WAIT_S = 0.1


class EventChannel:
    """Stands in for the Store inside an actor: the JobRunner's writes become events for the driver, which applies
    them to the real store (holding the lease there); cancel arrives from the driver through `cancel()`. Each job
    has its own queue, opened by the `run` that streams it: a late write of one job never reaches another's stream
    (a write for a job no `run` streams is dropped)."""

    def __init__(self, outputs_dir: Path):
        self.outputs_dir = outputs_dir
        self.queues: dict[str, queue.Queue[tuple]] = {}
        self.canceled: set[str] = set()

    def open(self, prediction_id: str) -> queue.Queue[tuple]:
        self.queues[prediction_id] = events = queue.Queue()
        return events

    def close(self, prediction_id: str, events: queue.Queue[tuple]) -> None:
        """End the run that opened `events` (a later run of the same id keeps its own queue)."""
        if self.queues.get(prediction_id) is events:
            del self.queues[prediction_id]
            self.canceled.discard(prediction_id)

    def _put(self, prediction_id: str, event: tuple) -> bool:
        events = self.queues.get(prediction_id)
        if events is None:
            return False
        events.put(event)
        return True

    def report(self, prediction_id: str, owner: str, **values: Any) -> bool:
        return self._put(prediction_id, ("report", values))

    def heartbeat(self, prediction_id: str, owner: str, lease_s: float) -> bool:
        return self._put(prediction_id, ("heartbeat",))

    def finish(self, prediction_id: str, owner: str, status: str, **values: Any) -> bool:
        """The final write, with the bytes of every output file the job wrote (removed here afterwards)."""
        files = {}
        for path in sorted(self.outputs_dir.glob(f"{prediction_id}*")):
            files[path.name] = path.read_bytes()
            path.unlink()
        return self._put(prediction_id, ("finish", status, values, files))

    def cancel_requested(self, prediction_id: str) -> bool:
        return prediction_id in self.canceled


def actor_devices(config: WorkerConfig, gpus: int) -> WorkerConfig:
    """The devices of this actor: Ray shows it exactly the GPUs it was given (as cuda:0..N-1); without CUDA
    (a CPU node offering a declared GPU resource) the model runs on the CPU."""
    import torch  # heavy; already loaded by the model pool's imports

    s = config.settings
    listed = ",".join(str(i) for i in range(gpus)) if torch.cuda.is_available() and gpus else None
    device = s.device if s.device != "auto" or torch.cuda.is_available() else "cpu"
    [devices] = worker_device_sets(device, listed, s.sequence_parallel)[:1]
    return dataclasses.replace(config, device=devices[0], devices=devices if len(devices) > 1 else ())


class GpuWorker:
    """The Ray actor (made remote by the executor): loads the default model at construction, then runs one job
    per `run` call, streaming its events; `cancel` (a second actor thread) stops it at the next denoising step."""

    def __init__(self, config: WorkerConfig, gpus: int):
        self.scratch = Path(tempfile.mkdtemp(prefix="vace-ray-"))
        settings = config.settings.model_copy(update={"data_dir": self.scratch})
        self.config = actor_devices(dataclasses.replace(config, settings=settings), gpus)
        self.pool = ModelPool(self.config, self.scratch / "work" / "group")
        self.default = next(iter(self.config.models))
        self.model = self.pool.get(self.default)
        self.channel = EventChannel(self.scratch / "outputs")
        self.runner = JobRunner(self.channel, self.pool, self.config)
        self.rendering = threading.Lock()  # one job at a time on the actor's model, whatever the driver sends

    def describe(self) -> dict[str, Any]:
        """Where this actor runs and what it loaded (the driver's health and per-job metrics show it)."""
        import ray  # only ever called inside a Ray actor

        context = ray.get_runtime_context()
        return {"node": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "gpus": [str(g) for g in ray.get_gpu_ids()], "devices": list(self.config.devices or
                                                                             (self.config.device,)),
                "model": self.default, "levers": getattr(self.model, "levers", None),
                "offload": getattr(self.model, "offload", None)}

    def run(self, job: Prediction, test_stop_at_step: int | None = None) -> Iterator[tuple]:
        """The job's events, in order, ending with its final write (`test_stop_at_step`: the fault-test hook); a
        ("beat",) after every BEAT_S without one, so the driver can tell a live actor from a stopped or hung one."""
        done = threading.Event()
        events = self.channel.open(job.id)
        runner = self.runner if test_stop_at_step is None else JobRunner(
            self.channel, self.pool, dataclasses.replace(self.config, test_stop_at_step=test_stop_at_step))

        def work() -> None:
            try:
                with self.rendering:
                    runner.run(job)
            finally:
                done.set()

        threading.Thread(target=work, name=f"job-{job.id}", daemon=True).start()
        try:
            sent = time.monotonic()
            while True:
                try:
                    event = events.get(timeout=EVENT_WAIT_S)
                except queue.Empty:
                    if done.is_set() and events.empty():
                        break
                    if time.monotonic() - sent < BEAT_S:
                        continue
                    event = ("beat",)
                sent = time.monotonic()
                yield event
        finally:
            self.channel.close(job.id, events)
            shutil.rmtree(self.scratch / "work" / job.id, ignore_errors=True)

    def cancel(self, prediction_id: str) -> None:
        self.channel.canceled.add(prediction_id)
