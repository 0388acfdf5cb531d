"""Task settings (GenerationRequest.task_options): every name, default and range, validated in one place.

Every key is checked: an unknown key or a bad value raises RequestError naming `task_options.<key>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from vace.pipelines.job.request import RequestError
from vace.pipelines.media.transparency import MODES

SIDES = ("left", "right", "top", "bottom")
CLIP_POSITIONS = ("first", "last")
MASK_TRACKING = ("none", "sam2")
# Annotators a task may run on its source video when preprocess is true (first = default).
ANNOTATOR_CHOICES: dict[str, tuple[str, ...]] = {
    "depth": ("depth",),
    "pose": ("pose",),
    "face": ("face",),
    "flow": ("raft", "farneback"),
    "scribble": ("lineart", "canny"),
    "gray": ("gray",),
    "animate-anything": ("pose",),
}
MAX_EXPAND_RATIO = 4.0


@dataclass(frozen=True)
class TaskOptions:
    preprocess: bool = True  # false: the given video already is the control video
    annotator: str | None = None  # None: the task's default (ANNOTATOR_CHOICES)
    match_input_num_frames: bool = False
    match_input_frames_per_second: bool = False
    expand_left: bool = False
    expand_right: bool = False
    expand_top: bool = False
    expand_bottom: bool = False
    expand_ratio: float = 0.25
    trim_borders: bool = True
    zoom_factor: float = 0.0
    clip_position: str = "first"
    clip_frames: int | None = None
    mask_tracking: str | None = None  # None: "sam2" for swap-anything with a mask image, else "none"
    boxes: list[list[float]] = field(default_factory=list)
    transparency_mode: str = "content_aware"  # first/last frame images with alpha (pipelines.transparency)

    def sides(self) -> dict[str, bool]:
        return {s: getattr(self, f"expand_{s}") for s in SIDES}


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise RequestError(f"task_options.{key}", f"must be true or false, got {value!r}")


def _number(key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"task_options.{key}", f"must be a number between {lo} and {hi}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"task_options.{key}", f"must be a number between {lo} and {hi}, got {value!r}") from None
    if not lo <= number <= hi:
        raise RequestError(f"task_options.{key}", f"must be between {lo} and {hi}, got {value!r}")
    return number


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RequestError(f"task_options.{key}", f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _boxes(value: Any) -> list[list[float]]:
    message = "must be a list of at least two boxes [x1, y1, x2, y2] in output pixels (start ... end)"
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise RequestError("task_options.boxes", f"{message}, got {value!r}")
    boxes = []
    for box in value:
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in box)):
            raise RequestError("task_options.boxes", f"{message}, got {box!r}")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise RequestError("task_options.boxes", f"each box needs x2 > x1 and y2 > y1, got {list(box)!r}")
        boxes.append([float(v) for v in box])
    return boxes


def parse_options(task: str | None, raw: dict[str, Any] | None) -> TaskOptions:
    """Validate the known keys of raw task_options for `task` (None = inferred from the media)."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise RequestError(f"task_options.{unknown[0]}",
                           f"unknown task option; known: {', '.join(sorted(KNOWN_KEYS))}")
    values: dict[str, Any] = {}
    for key in ("preprocess", "match_input_num_frames", "match_input_frames_per_second", "trim_borders",
                *(f"expand_{s}" for s in SIDES)):
        if key in raw and raw[key] is not None:
            values[key] = _bool(key, raw[key])
    if raw.get("expand_ratio") is not None:
        values["expand_ratio"] = _number("expand_ratio", raw["expand_ratio"], 0.0, MAX_EXPAND_RATIO)
    if raw.get("zoom_factor") is not None:
        values["zoom_factor"] = _number("zoom_factor", raw["zoom_factor"], 0.0, 1.0)
    if raw.get("clip_position") is not None:
        values["clip_position"] = _choice("clip_position", raw["clip_position"], CLIP_POSITIONS)
    if raw.get("clip_frames") is not None:
        frames = raw["clip_frames"]
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise RequestError("task_options.clip_frames", f"must be a positive integer, got {frames!r}")
        values["clip_frames"] = frames
    if raw.get("mask_tracking") is not None:
        values["mask_tracking"] = _choice("mask_tracking", raw["mask_tracking"], MASK_TRACKING)
    if raw.get("boxes") is not None:
        values["boxes"] = _boxes(raw["boxes"])
    if raw.get("transparency_mode") is not None:
        values["transparency_mode"] = _choice("transparency_mode", raw["transparency_mode"], MODES)
    if raw.get("annotator") is not None:
        choices = ANNOTATOR_CHOICES.get(task or "")
        if not choices:
            raise RequestError("task_options.annotator", f"task {task!r} runs no annotator")
        values["annotator"] = _choice("annotator", raw["annotator"], choices)
    return TaskOptions(**values)


KNOWN_KEYS = frozenset(f.name for f in fields(TaskOptions))


def annotator_for(task: str, options: TaskOptions) -> str:
    return options.annotator or ANNOTATOR_CHOICES[task][0]
