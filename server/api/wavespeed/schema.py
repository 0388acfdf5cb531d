"""WaveSpeed's wan-2.1-14b-vace input schema, its translation into a GenerationRequest and its envelope.

Pure: no HTTP, no store (server/api/wavespeed.py holds the routes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vace.pipelines.conditioning import tasks as task_registry
from vace.pipelines.job.delivery import DeliverOptions
from vace.pipelines.job.request import GenerationRequest, parse_size

MODEL_ID = "wavespeed-ai/wan-2.1-14b-vace"
FPS = 16
SIZES = ("832*480", "480*832", "1280*720", "720*1280")
STATUSES = {"queued": "created", "processing": "processing", "succeeded": "completed", "failed": "failed",
            "canceled": "failed"}


class WaveSpeedVaceInput(BaseModel):
    """POST /api/v3/wavespeed-ai/wan-2.1-14b-vace"""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1)
    negative_prompt: str = ""
    images: list[str] = Field(default_factory=list, max_length=5, description="Reference images")
    video: str | None = None
    task: Literal["depth", "pose", "face", "inpainting", "none"] = "depth"
    mask_video: str | None = None
    mask_image: str | None = None
    first_image: str | None = None
    last_image: str | None = None
    duration: int = Field(5, ge=5, le=10, description="Seconds at 16 fps: 81..161 frames")
    size: Literal["832*480", "480*832", "1280*720", "720*1280"] = "832*480"
    num_inference_steps: int = Field(30, ge=1, le=40)
    guidance_scale: float = Field(5.0, ge=0, le=20)
    flow_shift: float = Field(16.0, ge=0, le=30)
    context_scale: float = Field(1.0, ge=0, le=2)
    seed: int = Field(-1, ge=-1, le=2147483647)
    enable_safety_checker: bool = True
    enable_sync_mode: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> WaveSpeedVaceInput:
        if self.task == "inpainting" and not (self.mask_video or self.mask_image):
            raise ValueError("task inpainting needs mask_video or mask_image")
        if self.task == "inpainting" and not self.video:
            raise ValueError("task inpainting needs video")
        return self


class WaveSpeedInputError(Exception):
    """Invalid input: (field, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))
        self.errors = errors

    @property
    def message(self) -> str:
        return "Invalid input: " + str(self)


def parse_input(body: Any) -> WaveSpeedVaceInput:
    if not isinstance(body, dict):
        raise WaveSpeedInputError([("body", "the request body must be a JSON object")])
    try:
        return WaveSpeedVaceInput.model_validate(body)
    except ValidationError as exc:
        raise WaveSpeedInputError([(".".join(map(str, e["loc"])) or "body", e["msg"])
                                   for e in exc.errors(include_url=False)]) from None


def frames_for(duration: int) -> int:
    """duration seconds at 16 fps as a 4n+1 frame count: 5 s -> 81 ... 10 s -> 161."""
    return duration * FPS + 1


@dataclass
class WaveSpeedJob:
    request: GenerationRequest
    deliver: DeliverOptions
    sync_mode: bool


# GenerationRequest field -> WaveSpeed field, for errors raised after translation.
REQUEST_TO_WAVESPEED = {
    "width": "size", "height": "size", "num_frames": "duration", "fps": "duration", "steps": "num_inference_steps",
    "guidance": "guidance_scale", "shift": "flow_shift", "conditioning_scale": "context_scale",
    "reference_images": "images", "first_frame": "first_image", "last_frame": "last_image", "mask": "mask_video",
    "task_options": "task",
}


def wavespeed_field(request_field: str, data: WaveSpeedVaceInput | None = None) -> str:
    base, _, index = request_field.partition("[")
    name = REQUEST_TO_WAVESPEED.get(base, base)
    if base == "mask" and data is not None and not data.mask_video:
        name = "mask_image"
    return f"{name}.{index.rstrip(']')}" if index else name


def build_job(data: WaveSpeedVaceInput, available_tasks: set[str] | None = None) -> WaveSpeedJob:
    """Translate validated input. With a video, `task` names the annotator run on it (depth / pose / face),
    `inpainting` uses the mask, `none` takes the video as it is (a ready control video, or with a mask an
    inpainting). Without a video the conditioning follows from the images given."""
    available = set(task_registry.TASKS) if available_tasks is None else available_tasks
    options: dict[str, Any] = {}
    task: str | None = None
    if data.video:
        if data.task in ("depth", "pose", "face"):
            task, options = data.task, {"preprocess": True}
        elif data.task == "inpainting":
            task = "inpainting"
        if task is not None and task not in available:
            raise WaveSpeedInputError([("task", f"task {task!r} is not available on this server "
                                                f"(available: {', '.join(sorted(available))})")])
    elif data.mask_video or data.mask_image:
        raise WaveSpeedInputError([("mask_video" if data.mask_video else "mask_image", "a mask needs video")])
    if data.video and (data.first_image or data.last_image):
        raise WaveSpeedInputError([("first_image" if data.first_image else "last_image",
                                    "first/last images cannot be combined with video")])
    width, height = parse_size(data.size)
    request = GenerationRequest(
        prompt=data.prompt, negative_prompt=data.negative_prompt, width=width, height=height,
        num_frames=frames_for(data.duration), fps=FPS, steps=data.num_inference_steps,
        guidance=data.guidance_scale, shift=data.flow_shift, seed=data.seed, conditioning_scale=data.context_scale,
        video=data.video, mask=data.mask_video or data.mask_image, reference_images=list(data.images),
        first_frame=data.first_image, last_frame=data.last_image, task=task, task_options=options)
    return WaveSpeedJob(request, DeliverOptions(safety_check=data.enable_safety_checker), data.enable_sync_mode)


def envelope(data: Any, code: int = 200, message: str = "success") -> dict[str, Any]:
    return {"code": code, "message": message, "data": data}


def nsfw_flags(output: dict[str, Any] | None, outputs: list[str]) -> list[bool]:
    """has_nsfw_contents: one verdict per output; empty when no classifier looked at the video."""
    safety = (output or {}).get("safety")
    if not outputs or not safety or not safety.get("checked"):
        return []
    return [bool(safety.get("nsfw"))] * len(outputs)
