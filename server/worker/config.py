"""What one worker process is told: the server's settings (as data) and its own identity and devices."""

from __future__ import annotations

from dataclasses import dataclass

from vace.server.settings import ServeSettings

LEASE_S = 30.0


@dataclass(frozen=True)
class WorkerConfig:
    """Picklable: it crosses a spawn boundary."""

    settings: ServeSettings
    database_url: str
    worker_id: str = "worker"
    device: str = "auto"
    devices: tuple[str, ...] = ()  # a sequence-parallel group (2+ devices, see devices.py); () = `device`
    lease_s: float = LEASE_S
    test_stop_at_step: int | None = None  # settings.test_stop_at_step, for the first worker only

    @property
    def models(self) -> dict[str, str]:
        return self.settings.served_models()
