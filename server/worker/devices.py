"""Device planning: which devices each worker gets (`--gpus`, `--sequence-parallel`)."""

from __future__ import annotations

import dataclasses

from vace.pipelines.parallel.plan import parse_gpus, plan_groups
from vace.server.worker.config import WorkerConfig
from vace.weights.loader import resolve_device


def worker_device_sets(device: str, gpus: str | None, sequence_parallel: int) -> list[tuple[str, ...]]:
    """The devices of each worker: `--gpus 0,1,2,3` -> four workers on cuda:0..3; with
    `--sequence-parallel 2` -> two workers, each a group of two GPUs. Without --gpus: one worker on
    `device` (on CPU with --sequence-parallel N: one group of N processes sharing the CPU)."""
    if gpus:
        return plan_groups([f"cuda:{i}" for i in parse_gpus(gpus)], sequence_parallel)
    if sequence_parallel > 1:
        if device == "auto":
            device = resolve_device(device)
        if device == "cpu":
            return plan_groups(["cpu"], sequence_parallel)
        raise ValueError("--sequence-parallel on GPUs needs --gpus (e.g. --gpus 0,1,2,3 --sequence-parallel 4)")
    return [(device,)]


def worker_configs(config: WorkerConfig, device_sets: list[tuple[str, ...]]) -> list[WorkerConfig]:
    return [dataclasses.replace(config, device=devices[0], devices=devices if len(devices) > 1 else ())
            for devices in device_sets]
