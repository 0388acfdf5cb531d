"""The executor `vace serve --executor` chose: local supervised processes, or actors on a Ray cluster."""

from __future__ import annotations

from vace.server.metrics import WorkerState
from vace.server.storage import Storage
from vace.server.store import Store
from vace.server.worker import supervisor as local
from vace.server.worker.config import WorkerConfig
from vace.server.worker.ray_executor import RayExecutor

Executor = local.WorkerSupervisor | local.SupervisorSet | RayExecutor


def make_executor(store: Store, config: WorkerConfig, storage: Storage) -> Executor:
    """`storage`: the server's uploads and outputs (the Ray executor's feeders read inputs and write outputs
    there; local workers open their own)."""
    if config.settings.executor == "ray":
        return RayExecutor(store, config, config.settings.ray_address, storage)
    return local.make_supervisor(store, config)


def worker_states(executor: Executor, busy_owners: set[str]) -> list[WorkerState]:
    """Each worker as /metrics reports it (see supervisor.worker_states)."""
    if isinstance(executor, RayExecutor):
        return executor.states()
    return local.worker_states(executor, busy_owners)
