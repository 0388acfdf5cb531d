"""Replicate model schemas: prunaai/vace-14b (exactly as hosted) and this project's own models.

Each model knows its cog-style input schema, translates its input into a GenerationRequest, and maps
GenerationRequest field names back to its own for error messages. Type, enum and required checks are
this schema's; ranges are enforced once, by GenerationRequest.validated().
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from vace.pipelines.acceleration.presets import SPEED_MODES, TurboMap, preset_for_speed_mode
from vace.pipelines.job.loras import EXPERTS, MAX_LORAS, MAX_SCALE
from vace.pipelines.job.request import GenerationRequest, parse_size
from vace.server.service.errors import InvalidInput

COG_VERSION = "0.13.0"
VERSION_CREATED_AT = "2025-05-20T00:00:00.000000Z"

PRUNAAI_SIZES = ("832*480", "480*832", "1280*720", "720*1280")
PRUNAAI_SPEED_MODES = SPEED_MODES  # prunaai speed_mode -> GenerationRequest.preset

PRUNAAI_VERSIONS = (
    "51299232dc3d0946d5f5ed74935d85243e172698f747d291460db1e6ef3669fb",
    "bbafc615de3e3903470a335f94294810ced166309adcba307ac8692113a7b273",
)

_URI = {"type": "string", "format": "uri"}

PRUNAAI_INPUT: dict[str, dict[str, Any]] = {
    "prompt": {"type": "string", "title": "Prompt", "description": "Text prompt"},
    "src_video": {**_URI, "title": "Src Video", "description": "Input video to edit / control video"},
    "src_mask": {**_URI, "title": "Src Mask",
                 "description": "Input mask video or image to edit (white = generate)"},
    "src_ref_images": {"type": "array", "items": _URI, "maxItems": 3, "title": "Src Ref Images",
                       "description": "Input reference images for editing (up to 3)"},
    "size": {"type": "string", "enum": list(PRUNAAI_SIZES), "default": "832*480", "title": "Size",
             "description": "Output resolution, width*height"},
    "frame_num": {"type": "integer", "default": 81, "minimum": 5, "maximum": 241, "title": "Frame Num",
                  "description": "Number of frames to generate (4n+1; other values are rounded to it)"},
    "speed_mode": {"type": "string", "enum": list(PRUNAAI_SPEED_MODES),
                   "default": "Lightly Juiced 🍊 (more consistent)", "title": "Speed Mode",
                   "description": "Speed optimization level"},
    "sample_solver": {"type": "string", "enum": ["unipc", "dpm++"], "default": "unipc",
                      "title": "Sample Solver", "description": "Sample solver"},
    "sample_steps": {"type": "integer", "default": 50, "minimum": 1, "maximum": 100, "title": "Sample Steps",
                     "description": "Sample steps"},
    "sample_guide_scale": {"type": "number", "default": 5, "minimum": 0, "maximum": 20,
                           "title": "Sample Guide Scale", "description": "Sample guide scale"},
    "sample_shift": {"type": "number", "default": 16, "minimum": 0, "maximum": 30, "title": "Sample Shift",
                     "description": "Sample shift"},
    "seed": {"type": "integer", "default": -1, "minimum": -1, "maximum": 2**32 - 1, "title": "Seed",
             "description": "Random seed (-1 means random; the seed used is in the logs and metrics)"},
}

PRUNAAI_FIELD_NAMES = {
    "video": "src_video", "mask": "src_mask", "reference_images": "src_ref_images", "width": "size",
    "height": "size", "num_frames": "frame_num", "steps": "sample_steps", "guidance": "sample_guide_scale",
    "shift": "sample_shift", "sampler": "sample_solver", "preset": "speed_mode",
}

_LORA = {"type": "object", "properties": {
    "name": {"type": "string", "description": "a LoRA in the server's library (GET /v1/loras)"},
    "url": {**_URI, "description": "a .safetensors LoRA to fetch (cached by sha256)"},
    "scale": {"type": "number", "default": 1.0, "minimum": -MAX_SCALE, "maximum": MAX_SCALE},
    "expert": {"type": "string", "enum": list(EXPERTS), "default": "both",
               "description": "two-expert models: the high-noise or low-noise expert, or both"}}}

_NATIVE_DOCS = {
    "prompt": "Text prompt", "negative_prompt": "What to avoid", "width": "Width (multiple of 16)",
    "height": "Height (multiple of 16)", "num_frames": "Frame count (snapped to 4n+1)", "fps": "Frames per second",
    "steps": "Denoising steps", "guidance": "Classifier-free guidance scale",
    "guidance_2": "Guidance of the low-noise expert (two-expert models)", "shift": "Flow shift",
    "sampler": "unipc | dpm++ | euler", "seed": "-1 = random", "conditioning_scale": "VACE context scale",
    "video": "Source / control video URL", "mask": "Mask video or image URL (white = generate)",
    "reference_images": "Reference image URLs", "first_frame": "First frame image URL",
    "last_frame": "Last frame image URL", "task": "Task name (default: inferred from the inputs)",
    "task_options": "Task-specific options", "preset": "Acceleration preset (none | low | regular | turbo)",
    "loras": "LoRAs to apply: [{name | url, scale, expert}] (ComfyUI, kohya or diffusers keys)",
    "interpolated_frames": "Frames (0..5) inserted between each rendered pair; the fps grows by the same factor",
    "interpolator": "film | rife", "temporal_downsample": "Render every (d+1)-th frame (0..5), interpolate the rest",
    "auto_downsample": "Pick the downsample factor from the input fps", "auto_downsample_min_fps":
    "Lowest fps the automatic factor may render at", "expand_prompt": "Rewrite the prompt with the local LLM first",
}


def _native_schema() -> dict[str, dict[str, Any]]:
    """GenerationRequest's own fields as a schema (types and defaults come from the dataclass)."""
    json_types = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
    props: dict[str, dict[str, Any]] = {}
    defaults = GenerationRequest(prompt="")
    for f in dataclasses.fields(GenerationRequest):
        if f.name == "model":
            continue
        kind = str(f.type).split(" | ")[0]
        if f.name in ("video", "mask", "first_frame", "last_frame"):
            prop: dict[str, Any] = dict(_URI)
        elif f.name == "reference_images":
            prop = {"type": "array", "items": _URI}
        elif f.name == "loras":
            prop = {"type": "array", "maxItems": MAX_LORAS, "items": _LORA}
        elif f.name == "task_options":
            prop = {"type": "object"}
        elif f.name == "conditioning_scale":
            prop = {"type": "number"}
        else:
            prop = {"type": json_types.get(kind, "string")}
        value = getattr(defaults, f.name)
        if f.name != "prompt" and value not in (None, [], {}):
            prop["default"] = value
        prop["title"] = f.name.replace("_", " ").title()
        prop["description"] = _NATIVE_DOCS.get(f.name, "")
        props[f.name] = prop
    return props


NATIVE_INPUT = _native_schema()


def check_input(schema: dict[str, dict[str, Any]], required: list[str], data: Any) -> dict[str, Any]:
    """Types, enums, array lengths, required and unknown fields; every problem at once."""
    if not isinstance(data, dict):
        raise InvalidInput("input must be a JSON object", [("input", "must be a JSON object")])
    errors = [(name, "unknown field") for name in data if name not in schema]
    errors += [(name, "is required") for name in required if data.get(name) in (None, "")]
    checks = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}
    for name, value in data.items():
        prop = schema.get(name)
        if prop is None or value is None:
            continue
        if not checks[prop["type"]](value):
            errors.append((name, f"must be of type {prop['type']}, got {type(value).__name__}"))
        elif "enum" in prop and value not in prop["enum"]:
            errors.append((name, f"must be one of {', '.join(map(repr, prop['enum']))}, got {value!r}"))
        elif prop["type"] == "array":
            if "maxItems" in prop and len(value) > prop["maxItems"]:
                errors.append((name, f"at most {prop['maxItems']} items are allowed, got {len(value)}"))
            item = prop["items"]["type"]
            errors += [(f"{name}[{i}]", f"must be {'a string' if item == 'string' else 'an object'}")
                       for i, v in enumerate(value) if not checks[item](v)]
    if errors:
        raise InvalidInput("; ".join(f"{f}: {m}" for f, m in errors), errors)
    return data


@dataclass(frozen=True)
class ReplicateModel:
    """One model as Replicate describes it, bound to the served model that runs it."""

    owner: str
    name: str
    served: str  # the name of the served model (weights) that renders it
    kind: str  # "prunaai" | "native"
    description: str

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def schema(self) -> dict[str, dict[str, Any]]:
        return PRUNAAI_INPUT if self.kind == "prunaai" else NATIVE_INPUT

    @property
    def versions(self) -> tuple[str, ...]:
        if self.kind == "prunaai":
            return PRUNAAI_VERSIONS
        digest = hashlib.sha256(json.dumps([self.ref, NATIVE_INPUT], sort_keys=True).encode()).hexdigest()
        return (digest,)

    def to_request(self, data: Any, turbo: TurboMap | None = None) -> GenerationRequest:
        """The job an input asks for; `turbo`: the speed_mode values the operator runs as preset turbo."""
        check_input(self.schema, ["prompt"], data)
        if self.kind == "native":
            return GenerationRequest.from_dict({k: v for k, v in data.items() if v is not None})
        get = lambda key: data.get(key) if data.get(key) is not None else PRUNAAI_INPUT[key].get("default")  # noqa: E731
        width, height = parse_size(get("size"))
        return GenerationRequest(
            prompt=data["prompt"], video=data.get("src_video"), mask=data.get("src_mask"),
            reference_images=list(data.get("src_ref_images") or []), width=width, height=height,
            num_frames=get("frame_num"), steps=get("sample_steps"), guidance=float(get("sample_guide_scale")),
            shift=float(get("sample_shift")), sampler=get("sample_solver"), seed=get("seed"),
            preset=preset_for_speed_mode(get("speed_mode"), turbo),
        )

    def field_name(self, request_field: str) -> str:
        """GenerationRequest field name -> this model's input field name."""
        if self.kind == "native":
            return request_field
        base, bracket, rest = request_field.partition("[")
        return PRUNAAI_FIELD_NAMES.get(base, base) + (bracket + rest if bracket else "")

    def openapi_schema(self) -> dict[str, Any]:
        props = {name: {**prop, "x-order": i} for i, (name, prop) in enumerate(self.schema.items())}
        return {
            "openapi": "3.0.2",
            "info": {"title": self.ref, "version": self.versions[0]},
            "paths": {},
            "components": {"schemas": {
                "Input": {"type": "object", "title": "Input", "required": ["prompt"], "properties": props},
                "Output": {"type": "string", "format": "uri", "title": "Output"},
            }},
        }

    def version_json(self, version_id: str | None = None) -> dict[str, Any]:
        return {"id": version_id or self.versions[0], "created_at": VERSION_CREATED_AT,
                "cog_version": COG_VERSION, "openapi_schema": self.openapi_schema()}


def catalog(served: list[str]) -> dict[str, ReplicateModel]:
    """prunaai/vace-14b (rendered by the first served model) and vace/<name> for every served model."""
    models = {
        "prunaai/vace-14b": ReplicateModel(
            "prunaai", "vace-14b", served[0], "prunaai",
            "VACE 14B video creation and editing (prunaai/vace-14b compatible input)"),
    }
    for name in served:
        models[f"vace/{name}"] = ReplicateModel("vace", name, name, "native",
                                                f"VACE model {name} with this server's native input schema")
    return models
