"""Delivery options: what is done with the rendered frames before they are handed out (encoder settings of
pipelines.media.codec.write_mp4, a frames zip, the safety check)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_QUALITY = 8.0  # write_mp4's default: CRF 10
DEFAULT_PRESET = "medium"


@dataclass
class DeliverOptions:
    quality: float = DEFAULT_QUALITY
    preset: str = DEFAULT_PRESET
    frames_zip: bool = False
    safety_check: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DeliverOptions:
        data = data or {}
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
