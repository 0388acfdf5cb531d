"""The one internal generation request every API dialect translates into."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vace.pipelines.job.errors import RequestError
from vace.pipelines.job.loras import parse_loras

SAMPLERS = ("unipc", "dpm++", "euler")
MIN_FRAMES = 5
MAX_FRAMES = 241
MAX_REFERENCE_IMAGES = 5
MAX_SEED = 2**32 - 1
MIN_SIDE = 16
# The fields that hold one media reference (a URL, a data: URI or a server-side path); reference_images holds a list.
MEDIA_FIELDS = ("video", "mask", "first_frame", "last_frame")
MAX_SIDE = 2048
INTERPOLATOR_NAMES = ("film", "rife")
MAX_INTERPOLATED_FRAMES = 5  # frames inserted between each pair
MAX_DOWNSAMPLE_FACTOR = 5  # input frames skipped between two kept ones

DEFAULT_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
    "picture, messy background, three legs, many people in the background, walking backwards"
)


def snap_frames(num_frames: int) -> int:
    """Nearest frame count of the form 4n+1 (the Wan VAE's temporal stride)."""
    return ((num_frames - 1 + 2) // 4) * 4 + 1


def parse_size(size: str) -> tuple[int, int]:
    """Parse a 'W*H' (or 'WxH') size string into (width, height)."""
    for sep in ("*", "x", "X"):
        if sep in size:
            w, _, h = size.partition(sep)
            try:
                return int(w), int(h)
            except ValueError:
                break
    raise RequestError("size", f"expected 'WIDTH*HEIGHT', got {size!r}")


@dataclass
class GenerationRequest:
    """What to render. Media fields hold a local path, an http(s) URL or a data: URI.

    `task` selects the task builder (pipelines.tasks); with task None the conditioning is derived
    from which media are present (video+mask = inpainting, refs only = r2v, nothing = t2v, ...).
    `task_options` carries task-specific settings (expand sides, boxes, annotator choice, ...).
    `interpolated_frames` k inserts k frames between each rendered pair (fps x (k + 1)), made by `interpolator`;
    `temporal_downsample` d renders every (d + 1)-th frame and interpolates the rest back (`auto_downsample`
    picks d from the input fps and `auto_downsample_min_fps`); `expand_prompt` rewrites the prompt with a
    local LLM first (pipelines.conditioning.temporal / prompt_expansion).
    """

    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    width: int = 832
    height: int = 480
    num_frames: int = 81
    fps: int = 16
    steps: int = 50
    guidance: float = 5.0
    guidance_2: float | None = None
    shift: float = 16.0
    sampler: str = "unipc"
    seed: int = -1
    conditioning_scale: float | list[float] = 1.0
    video: str | None = None
    mask: str | None = None
    reference_images: list[str] = field(default_factory=list)
    first_frame: str | None = None
    last_frame: str | None = None
    task: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    preset: str = "none"
    loras: list[dict[str, Any]] = field(default_factory=list)  # {name | path | url, scale, expert}: job.loras
    interpolated_frames: int = 0
    interpolator: str = "film"
    temporal_downsample: int = 0
    auto_downsample: bool = False
    auto_downsample_min_fps: float = 15.0
    expand_prompt: bool = False
    model: str | None = None

    def validated(self) -> GenerationRequest:
        """Return a copy with num_frames snapped to 4n+1; raise RequestError on the first bad field."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            if self.task not in ("reframe",):
                raise RequestError("prompt", "a non-empty prompt is required")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < MIN_SIDE or value > MAX_SIDE:
                raise RequestError(name, f"must be an integer between {MIN_SIDE} and {MAX_SIDE}, got {value!r}")
            if value % 16:
                raise RequestError(name, f"must be a multiple of 16, got {value}")
        if not isinstance(self.num_frames, int) or not MIN_FRAMES <= self.num_frames <= MAX_FRAMES:
            raise RequestError(
                "num_frames", f"must be between {MIN_FRAMES} and {MAX_FRAMES}, got {self.num_frames!r}"
            )
        if not isinstance(self.fps, int) or not 1 <= self.fps <= 60:
            raise RequestError("fps", f"must be between 1 and 60, got {self.fps!r}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 100:
            raise RequestError("steps", f"must be between 1 and 100, got {self.steps!r}")
        for name in ("guidance", "guidance_2"):
            value = getattr(self, name)
            if value is not None and not 0 <= float(value) <= 20:
                raise RequestError(name, f"must be between 0 and 20, got {value!r}")
        if not 0 <= float(self.shift) <= 30:
            raise RequestError("shift", f"must be between 0 and 30, got {self.shift!r}")
        if self.sampler not in SAMPLERS:
            raise RequestError("sampler", f"must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if not isinstance(self.seed, int) or not -1 <= self.seed <= MAX_SEED:
            raise RequestError("seed", f"must be -1 (random) or between 0 and {MAX_SEED}, got {self.seed!r}")
        scales = self.conditioning_scale if isinstance(self.conditioning_scale, list) else [self.conditioning_scale]
        if not scales or any(not 0 <= float(s) <= 2 for s in scales):
            raise RequestError("conditioning_scale", f"must be between 0 and 2, got {self.conditioning_scale!r}")
        if len(self.reference_images) > MAX_REFERENCE_IMAGES:
            raise RequestError(
                "reference_images",
                f"at most {MAX_REFERENCE_IMAGES} reference images are allowed, got {len(self.reference_images)}",
            )
        if self.mask and not self.video:
            raise RequestError("mask", "a mask needs a source video")
        for name, top in (("interpolated_frames", MAX_INTERPOLATED_FRAMES),
                          ("temporal_downsample", MAX_DOWNSAMPLE_FACTOR)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise RequestError(name, f"must be an integer between 0 and {top}, got {value!r}")
        if self.interpolator not in INTERPOLATOR_NAMES:
            raise RequestError("interpolator", f"must be one of {', '.join(INTERPOLATOR_NAMES)}, "
                                               f"got {self.interpolator!r}")
        if not 1 <= float(self.auto_downsample_min_fps) <= 60:
            raise RequestError("auto_downsample_min_fps", f"must be between 1 and 60, got "
                                                          f"{self.auto_downsample_min_fps!r}")
        if self.auto_downsample and self.temporal_downsample:
            raise RequestError("temporal_downsample", "give a factor or auto_downsample, not both")

        if not isinstance(self.preset, str) or not self.preset:
            raise RequestError("preset", f"expected a preset name, got {self.preset!r}")
        num_frames = snap_frames(self.num_frames)
        latent_frames = (num_frames - 1) // 4 + 1  # the VAE packs 4 frames (the first alone) into a latent frame
        if len(self.reference_images) > latent_frames:
            raise RequestError(
                "reference_images",
                f"{len(self.reference_images)} reference images need at least "
                f"{4 * (len(self.reference_images) - 1) + 1} frames (each takes the place of one latent frame, "
                f"and {num_frames} frames make {latent_frames}); give fewer images or more frames",
            )
        loras = [spec.to_dict() for spec in parse_loras(self.loras)]
        return dataclasses.replace(self, num_frames=num_frames, loras=loras)

    def with_seed(self) -> GenerationRequest:
        """Resolve seed -1 to a concrete random seed."""
        if self.seed != -1:
            return self
        return dataclasses.replace(self, seed=random.SystemRandom().randint(0, MAX_SEED))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise RequestError(sorted(unknown)[0], "unknown field")
        return cls(**data)


def changed_media(data: Mapping[str, Any], change: Callable[[str, str], Any]) -> dict[str, Any]:
    """{field: new value} for every media reference among a request's fields (the request's own or its JSON):
    `change(reference, field name)` for each of MEDIA_FIELDS that is set and each of reference_images, by index."""
    out = {name: change(data[name], name) for name in MEDIA_FIELDS if data.get(name)}
    if isinstance(data.get("reference_images"), (list, tuple)):
        out["reference_images"] = [change(ref, f"reference_images[{i}]")
                                   for i, ref in enumerate(data["reference_images"])]
    return out


def with_media(request: GenerationRequest, change: Callable[[str, str], str]) -> GenerationRequest:
    """`request` with every media reference it holds replaced by `change(reference, field name)`."""
    fields = {name: getattr(request, name) for name in (*MEDIA_FIELDS, "reference_images")}
    return dataclasses.replace(request, **changed_media(fields, change))
