"""Multi-GPU serving: `--gpus` (one worker per GPU or per group, all fed by the one queue) and
`--sequence-parallel N` / `--sp-mode` (each worker a group of N ranks sharing every job).

The worker process stays the one unit the supervisor restarts; with a group it owns a
pipelines.distributed.RenderGroup (N rank processes) in place of a loaded model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vace.pipelines.media.fetch import FetchPolicy
from vace.server.store import Store
from vace.server.worker.runner import WorkerConfig
from vace.server.worker.supervisor import READY, SETUP_FAILED, STARTING, WorkerSupervisor


def worker_device_sets(device: str, gpus: str | None, sequence_parallel: int) -> list[tuple[str, ...]]:
    """The devices of each worker: `--gpus 0,1,2,3` -> four workers on cuda:0..3; with
    `--sequence-parallel 2` -> two workers, each a group of two GPUs. Without --gpus: one worker on
    `device` (on CPU with --sequence-parallel N: one group of N processes sharing the CPU)."""
    from vace.pipelines.parallel.group import parse_gpus, plan_groups

    if gpus:
        return plan_groups([f"cuda:{i}" for i in parse_gpus(gpus)], sequence_parallel)
    if sequence_parallel > 1:
        if device == "auto":
            from vace.weights.loader import resolve_device

            device = resolve_device(device)
        if device == "cpu":
            return plan_groups(["cpu"], sequence_parallel)
        raise ValueError("--sequence-parallel on GPUs needs --gpus (e.g. --gpus 0,1,2,3 --sequence-parallel 4)")
    return [(device,)]


def worker_configs(config: WorkerConfig, device_sets: list[tuple[str, ...]]) -> list[WorkerConfig]:
    return [dataclasses.replace(config, device=devices[0], devices=devices if len(devices) > 1 else ())
            for devices in device_sets]


def load_served_model(path: str, name: str, config: WorkerConfig, work_dir: Path) -> Any:
    """A LoadedModel on config.device (memory mode and GPU levers applied), or a started and ready
    RenderGroup when config.devices is a group."""
    if len(config.devices) > 1:
        from vace.pipelines.parallel.group import GroupSpec, RenderGroup

        group = RenderGroup(GroupSpec(path, tuple(config.devices), config.sp_mode, name), work_dir=work_dir)
        group.wait_ready()
        return group
    from vace.pipelines.acceleration.levers import apply_gpu_levers
    from vace.weights.loader import load_pipeline

    model = load_pipeline(path, device=config.device, name=name, offload=config.offload)
    apply_gpu_levers(model, attention=config.attention, compile_blocks=config.compile_blocks, fp8=config.fp8)
    return model


def release(model: Any) -> None:
    """Stop a RenderGroup's ranks (a LoadedModel is simply dropped)."""
    from vace.pipelines.parallel.group import RenderGroup

    if isinstance(model, RenderGroup):
        model.stop()


def renderer_for(model: Any, work_dir: Path, fetch_policy: FetchPolicy) -> Any:
    """Renderer or GroupRenderer: the same prepare / render interface for JobRunner."""
    from vace.pipelines.parallel.group import GroupRenderer, RenderGroup

    if isinstance(model, RenderGroup):
        return GroupRenderer(model, work_dir=work_dir, fetch_policy=fetch_policy)
    from vace.pipelines.engine.render import Renderer

    return Renderer(model, work_dir=work_dir, fetch_policy=fetch_policy)


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


def make_supervisor(store: Store, config: WorkerConfig, gpus: str | None, sequence_parallel: int,
                    sp_mode: str) -> WorkerSupervisor | SupervisorSet:
    """The plain WorkerSupervisor for one single-device worker, else a SupervisorSet."""
    config = dataclasses.replace(config, sp_mode=sp_mode)
    sets = worker_device_sets(config.device, gpus, sequence_parallel)
    if sets == [(config.device,)]:
        return WorkerSupervisor(store, config)
    return SupervisorSet(store, worker_configs(config, sets))
