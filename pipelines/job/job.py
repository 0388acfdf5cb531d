"""The job: what every door (dialect, web page, batch, CLI) builds and the store persists as one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vace.pipelines.job.delivery import DeliverOptions
from vace.pipelines.job.request import GenerationRequest


@dataclass
class Job:
    request: GenerationRequest
    delivery: DeliverOptions = field(default_factory=DeliverOptions)

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request.to_dict(), "delivery": self.delivery.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], legacy_extra: dict[str, Any] | None = None) -> Job:
        """A stored job; rows written before jobs were one object held the bare request, and the delivery
        options in the prediction's `extra["deliver"]`."""
        if "request" in data and "delivery" in data:
            return cls(GenerationRequest.from_dict(data["request"]), DeliverOptions.from_dict(data["delivery"]))
        return cls(GenerationRequest.from_dict(data), DeliverOptions.from_dict((legacy_extra or {}).get("deliver")))

