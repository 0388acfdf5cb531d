"""The `loras` field of a request: which LoRAs a job runs with, at which scale, on which expert."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vace.pipelines.job.errors import RequestError

EXPERTS = ("both", "high_noise", "low_noise")  # Wan2.2: transformer = high-noise expert, transformer_2 = low-noise
MAX_LORAS = 8
MAX_SCALE = 4.0
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SPEC_FIELDS = ("name", "path", "url", "scale", "expert")


@dataclass(frozen=True)
class LoraSpec:
    """One requested LoRA: exactly one of name (the LoRA library), path or url; a scale; the expert(s) it is for."""

    name: str | None = None
    path: str | None = None
    url: str | None = None
    scale: float = 1.0
    expert: str = "both"

    @property
    def source(self) -> str:
        """Which of name/path/url names the file."""
        return "name" if self.name is not None else "path" if self.path is not None else "url"

    @property
    def reference(self) -> str:
        return self.name or self.path or self.url or ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.source: self.reference, "scale": self.scale}
        if self.expert != "both":
            out["expert"] = self.expert
        return out

    @classmethod
    def from_value(cls, value: Any, field_name: str) -> LoraSpec:
        """One entry of a request's `loras`; RequestError naming the offending field."""
        if isinstance(value, LoraSpec):
            value = value.to_dict()
        if not isinstance(value, dict):
            raise RequestError(field_name, "must be an object {name | path | url, scale, expert}")
        for key in value:
            if key not in _SPEC_FIELDS:
                raise RequestError(f"{field_name}.{key}", f"unknown field; known: {', '.join(_SPEC_FIELDS)}")
        given = [k for k in ("name", "path", "url") if value.get(k) is not None]
        if len(given) != 1:
            raise RequestError(field_name, "give exactly one of name, path or url")
        ref = value[given[0]]
        if not isinstance(ref, str) or not ref:
            raise RequestError(f"{field_name}.{given[0]}", "must be a non-empty string")
        if given[0] == "name" and not NAME_PATTERN.fullmatch(ref):
            raise RequestError(f"{field_name}.name", f"{ref!r} is not a LoRA name (letters, digits, '.', '_', '-')")
        scale = value.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
                or not -MAX_SCALE <= scale <= MAX_SCALE:
            raise RequestError(f"{field_name}.scale", f"must be a number between {-MAX_SCALE} and {MAX_SCALE}, "
                                                      f"got {scale!r}")
        expert = value.get("expert", "both")
        if expert not in EXPERTS:
            raise RequestError(f"{field_name}.expert", f"must be one of {', '.join(EXPERTS)}, got {expert!r}")
        return cls(**{given[0]: ref}, scale=float(scale), expert=expert)

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """The CLI form PATH_OR_NAME_OR_URL[:SCALE]: a URL if it has a scheme, a name if it is one and is no
        existing file, otherwise a path."""
        ref, sep, tail = text.rpartition(":")
        try:
            scale = float(tail) if sep else 1.0
        except ValueError:
            ref, scale = text, 1.0
        if not sep:
            ref = text
        if "://" in ref:
            key = "url"
        elif NAME_PATTERN.fullmatch(ref) and not Path(ref).is_file():
            key = "name"
        else:
            key = "path"
        return cls.from_value({key: ref, "scale": scale}, "--lora")


def parse_loras(value: Any, field_name: str = "loras") -> list[LoraSpec]:
    """A request's `loras` list -> LoraSpecs; RequestError naming the offending entry."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise RequestError(field_name, "must be a list of {name | path | url, scale} objects")
    if len(value) > MAX_LORAS:
        raise RequestError(field_name, f"at most {MAX_LORAS} LoRAs per job, got {len(value)}")
    return [LoraSpec.from_value(v, f"{field_name}[{i}]") for i, v in enumerate(value)]
