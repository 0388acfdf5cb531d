"""fal's wan-vace-14b / wan-22-vace-fun-a14b input schemas and their translation into a GenerationRequest.

Pure: no HTTP, no store. The route module (server/api/fal.py) validates a body with `parse_input`,
turns it into a job with `build_job` and shapes finished predictions with `output_json`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vace.pipelines.acceleration.presets import preset_for_acceleration
from vace.pipelines.conditioning import tasks as task_registry
from vace.pipelines.job.delivery import DeliverOptions
from vace.pipelines.job.request import DEFAULT_NEGATIVE_PROMPT, MAX_SEED, GenerationRequest, snap_frames
from vace.pipelines.media.probe import MediaInfo

WAN21_APP = "fal-ai/wan-vace-14b"
WAN22_APP = "fal-ai/wan-22-vace-fun-a14b"
APPS = (WAN21_APP, WAN22_APP)
SUBPATHS = ("depth", "pose", "inpainting", "outpainting", "reframe")

# Short side per resolution name; 16:9 / 9:16 sizes are the Wan sizes (multiples of 16).
RESOLUTIONS = {"240p": 240, "360p": 352, "480p": 480, "580p": 576, "720p": 720}
WIDE = {"240p": 416, "360p": 624, "480p": 832, "580p": 1024, "720p": 1280}
DEFAULT_RESOLUTION = "480p"
MAX_LONG_SIDE = 2048

# video_quality -> imageio-ffmpeg quality (libx264 CRF = int((1 - q/10) * 51)); video_write_mode -> x264 preset.
VIDEO_QUALITY = {"low": 4.5, "medium": 6.0, "high": 8.0, "maximum": 9.5}  # CRF 28 / 20 / 10 / 2
VIDEO_WRITE_MODE = {"fast": "veryfast", "balanced": "medium", "small": "slower"}

class FalCommon(BaseModel):
    """Input fields shared by every wan-vace endpoint."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., description="The text prompt")
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    ref_image_urls: list[str] | None = Field(None, max_length=5, description="Reference images")
    first_frame_url: str | None = None
    last_frame_url: str | None = None
    num_frames: int = Field(81, ge=17, le=241, description="Frames to generate (snapped to 4n+1)")
    frames_per_second: int = Field(16, ge=5, le=30)
    match_input_num_frames: bool = False
    match_input_frames_per_second: bool = False
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)
    resolution: Literal["auto", "240p", "360p", "480p", "580p", "720p"] = "auto"
    aspect_ratio: Literal["auto", "16:9", "1:1", "9:16"] = "auto"
    num_inference_steps: int = Field(30, ge=2, le=50)
    guidance_scale: float = Field(5.0, ge=1, le=10)
    sampler: Literal["unipc", "dpm++", "euler"] = "unipc"
    shift: float = Field(5.0, ge=1, le=15)
    acceleration: Literal["none", "low", "regular"] = "regular"
    enable_auto_downsample: bool = False
    auto_downsample_min_fps: float = Field(15, ge=1, le=60)
    temporal_downsample_factor: int = Field(0, ge=0, le=5)
    num_interpolated_frames: int = Field(0, ge=0, le=5)
    interpolator_model: Literal["rife", "film"] = "film"
    transparency_mode: Literal["content_aware", "white", "black"] = "content_aware"
    video_quality: Literal["low", "medium", "high", "maximum"] = "high"
    video_write_mode: Literal["fast", "balanced", "small"] = "balanced"
    return_frames_zip: bool = False
    enable_safety_checker: bool = Field(False, description="fal's default is false (both wan-vace seed documents)")
    enable_prompt_expansion: bool = False
    sync_mode: bool = False
    preprocess: bool = Field(False, description="Run the annotator on video_url instead of taking it as a "
                                                "ready control video")


class FalVideoInput(FalCommon):
    video_url: str = Field(..., description="The source / control video")


class FalDepthInput(FalVideoInput):
    """fal-ai/wan-vace-14b/depth"""


class FalPoseInput(FalVideoInput):
    """fal-ai/wan-vace-14b/pose"""


class FalInpaintingInput(FalVideoInput):
    """fal-ai/wan-vace-14b/inpainting: a mask video, or a guiding mask image for the first frame that is
    tracked through the video (SAM 2; ignored when a mask video is given)."""

    mask_video_url: str | None = None
    mask_image_url: str | None = Field(None, description="Mask of the first frame, tracked through the video "
                                                         "(ignored when mask_video_url is given)")

    @model_validator(mode="after")
    def _needs_mask(self) -> FalInpaintingInput:
        if not self.mask_video_url and not self.mask_image_url:
            raise ValueError("inpainting needs mask_video_url or mask_image_url")
        return self


class FalOutpaintingInput(FalVideoInput):
    """fal-ai/wan-vace-14b/outpainting"""

    expand_left: bool = False
    expand_right: bool = False
    expand_top: bool = False
    expand_bottom: bool = False
    expand_ratio: float = Field(0.25, ge=0, le=1)


class FalReframeInput(FalVideoInput):
    """fal-ai/wan-vace-14b/reframe"""

    prompt: str = ""
    trim_borders: bool = True
    zoom_factor: float = Field(0.0, ge=0, le=1)
    match_input_num_frames: bool = True
    match_input_frames_per_second: bool = True


class FalBaseInput(FalCommon):
    """fal-ai/wan-vace-14b: `task` picks what video_url is used for; without a video the task follows from
    the other media (text, reference images, first/last frame). The outpainting / reframe settings apply
    when task is outpainting / reframe."""

    task: Literal["depth", "pose", "inpainting", "outpainting", "reframe"] = "depth"
    video_url: str | None = None
    mask_video_url: str | None = None
    mask_image_url: str | None = None
    expand_left: bool = False
    expand_right: bool = False
    expand_top: bool = False
    expand_bottom: bool = False
    expand_ratio: float = Field(0.25, ge=0, le=1)
    trim_borders: bool = True
    zoom_factor: float = Field(0.0, ge=0, le=1)


SCHEMAS: dict[str, type[FalCommon]] = {
    "": FalBaseInput, "depth": FalDepthInput, "pose": FalPoseInput, "inpainting": FalInpaintingInput,
    "outpainting": FalOutpaintingInput, "reframe": FalReframeInput,
}


def endpoints() -> list[tuple[str, str]]:
    """Every (app, subpath) served; the Wan2.2 app has no base endpoint."""
    return [(WAN21_APP, "")] + [(app, sub) for app in APPS for sub in SUBPATHS]


def split_endpoint(path: str) -> tuple[str, str] | None:
    """'fal-ai/wan-vace-14b/depth' -> ('fal-ai/wan-vace-14b', 'depth'); None when not served."""
    path = path.strip("/")
    for app in APPS:
        if path == app or path.startswith(app + "/"):
            sub = path[len(app):].strip("/")
            return (app, sub) if (app, sub) in endpoints() else None
    return None


class FalInputError(Exception):
    """Invalid input; `detail` is fal's 422 list of {loc, msg, type}."""

    def __init__(self, detail: list[dict[str, Any]]):
        super().__init__("; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail))
        self.detail = detail

    @classmethod
    def of(cls, field_name: str, message: str, kind: str = "value_error") -> FalInputError:
        return cls([{"loc": ["body", field_name], "msg": message, "type": kind}])


def parse_input(sub: str, body: Any) -> FalCommon:
    """Validate a request body against the endpoint's schema; FalInputError lists every problem."""
    if not isinstance(body, dict):
        raise FalInputError([{"loc": ["body"], "msg": "the request body must be a JSON object",
                              "type": "dict_type"}])
    try:
        return SCHEMAS[sub].model_validate(body)
    except ValidationError as exc:
        detail = []
        for err in exc.errors(include_url=False):
            ctx = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                   for k, v in (err.get("ctx") or {}).items()}
            entry = {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            if ctx:
                entry["ctx"] = ctx
            detail.append(entry)
        raise FalInputError(detail) from None


Probe = Callable[[str, str], MediaInfo]  # (reference, fal field name) -> MediaInfo


@dataclass
class FalJob:
    """A validated fal request turned into what the prediction service stores."""

    request: GenerationRequest
    deliver: DeliverOptions
    two_experts: bool
    sync_mode: bool
    media_fields: dict[str, str] = field(default_factory=dict)  # GenerationRequest field -> fal field


def _snap16(value: float) -> int:
    return max(16, int(round(value / 16)) * 16)


def output_size(resolution: str, aspect_ratio: str, source: MediaInfo | None) -> tuple[int, int]:
    """(width, height) for a resolution + aspect ratio; `auto` takes them from the input video or image."""
    if resolution == "auto" and source is None:
        resolution = DEFAULT_RESOLUTION
    if resolution == "auto":
        short = min(max(_snap16(min(source.width, source.height)), RESOLUTIONS["240p"]), RESOLUTIONS["720p"])
        name = None
    else:
        short, name = RESOLUTIONS[resolution], resolution
    if aspect_ratio == "auto":
        if source is None:
            aspect_ratio = "16:9"
        else:
            ratio = source.width / source.height
            long = min(_snap16(short * max(ratio, 1 / ratio)), MAX_LONG_SIDE)
            return (long, short) if ratio >= 1 else (short, long)
    if aspect_ratio == "1:1":
        return short, short
    long = WIDE[name] if name else min(_snap16(short * 16 / 9), MAX_LONG_SIDE)
    return (long, short) if aspect_ratio == "16:9" else (short, long)


def _task(sub: str, data: FalCommon, available_tasks: set[str]) -> tuple[str | None, dict[str, Any], str]:
    """(GenerationRequest.task, task_options, the fal field to blame if the task is unavailable)."""
    kind = sub or getattr(data, "task", "depth")
    video = getattr(data, "video_url", None)
    options: dict[str, Any] = {}
    if data.match_input_num_frames:
        options["match_input_num_frames"] = True
    if data.match_input_frames_per_second:
        options["match_input_frames_per_second"] = True
    if not video:
        return None, options, "task"  # base endpoint without a video: text / reference / first-last frame
    if kind in ("depth", "pose"):
        if not data.preprocess:
            return "control", options, "preprocess"  # a ready-made depth / pose video
        return kind, {**options, "preprocess": True}, "preprocess"
    if kind == "inpainting":
        if not getattr(data, "mask_video_url", None):  # fal tracks its guiding mask image through the video
            options["mask_tracking"] = "sam2"
        return "inpainting", options, "task"
    if kind == "outpainting":
        sides = {s: getattr(data, f"expand_{s}") for s in ("left", "right", "top", "bottom")}
        return "outpainting", {**options, **{f"expand_{s}": v for s, v in sides.items()},
                               "expand_ratio": data.expand_ratio}, "task"  # type: ignore[attr-defined]
    return "reframe", {**options, "trim_borders": data.trim_borders,  # type: ignore[attr-defined]
                       "zoom_factor": data.zoom_factor}, "task"  # type: ignore[attr-defined]


def build_job(app: str, sub: str, data: FalCommon, probe: Probe | None = None,
              available_tasks: set[str] | None = None, preset_for: Callable[[str], str] | None = None) -> FalJob:
    """Translate a validated input into a GenerationRequest (+ delivery options). Raises FalInputError."""
    available = set(task_registry.TASKS) if available_tasks is None else available_tasks
    task, options, blame = _task(sub, data, available)
    if task is not None and task not in available:
        raise FalInputError.of(blame, f"task {task!r} is not available on this server "
                                      f"(available: {', '.join(sorted(available))})")
    video = getattr(data, "video_url", None)
    mask_video, mask_image = getattr(data, "mask_video_url", None), getattr(data, "mask_image_url", None)
    if getattr(data, "task", None) == "inpainting" and video and not (mask_video or mask_image):
        raise FalInputError.of("mask_video_url", "task inpainting needs mask_video_url or mask_image_url")
    if video and (data.first_frame_url or data.last_frame_url):
        raise FalInputError.of("first_frame_url", "first/last frame images cannot be combined with video_url")
    if task in (None, "inpainting") and not video and (mask_video or mask_image):
        raise FalInputError.of("mask_video_url" if mask_video else "mask_image_url", "a mask needs video_url")
    if task != "inpainting":
        mask_video = mask_image = None
    # Which input decides the `auto` size: the video, else the first (or last) frame image.
    source = None
    needs_probe = data.resolution == "auto" or data.aspect_ratio == "auto" or data.match_input_num_frames \
        or data.match_input_frames_per_second
    if probe is not None and needs_probe:
        if video:
            source = probe(video, "video_url")
        elif data.first_frame_url or data.last_frame_url:
            field_name = "first_frame_url" if data.first_frame_url else "last_frame_url"
            source = probe(getattr(data, field_name), field_name)
    width, height = output_size(data.resolution, data.aspect_ratio, source)
    num_frames, fps = data.num_frames, data.frames_per_second
    if video and source is not None and source.num_frames:
        if data.match_input_num_frames:
            num_frames = min(max(snap_frames(source.num_frames), 17), 241)
            if num_frames > source.num_frames:
                num_frames -= 4
            num_frames = max(num_frames, 17)
        if data.match_input_frames_per_second and source.fps:
            fps = int(min(max(round(source.fps), 5), 30))
    if data.transparency_mode != "content_aware" or data.first_frame_url or data.last_frame_url:
        options["transparency_mode"] = data.transparency_mode
    seed = -1 if data.seed is None else data.seed
    preset = (preset_for or preset_for_acceleration)(data.acceleration)
    request = GenerationRequest(
        prompt=data.prompt, negative_prompt=data.negative_prompt, width=width, height=height,
        num_frames=num_frames, fps=fps, steps=data.num_inference_steps, guidance=data.guidance_scale,
        shift=data.shift, sampler=data.sampler, seed=seed, video=video, mask=mask_video or mask_image,
        reference_images=list(data.ref_image_urls or []), first_frame=data.first_frame_url,
        last_frame=data.last_frame_url, task=task, task_options=options, preset=preset,
        interpolated_frames=data.num_interpolated_frames, interpolator=data.interpolator_model,
        temporal_downsample=data.temporal_downsample_factor,
        auto_downsample=data.enable_auto_downsample, auto_downsample_min_fps=data.auto_downsample_min_fps,
        expand_prompt=data.enable_prompt_expansion)
    deliver = DeliverOptions(quality=VIDEO_QUALITY[data.video_quality], preset=VIDEO_WRITE_MODE[data.video_write_mode],
                             frames_zip=data.return_frames_zip, safety_check=data.enable_safety_checker)
    media_fields = {"video": "video_url", "mask": "mask_video_url" if mask_video else "mask_image_url",
                    "first_frame": "first_frame_url", "last_frame": "last_frame_url",
                    "reference_images": "ref_image_urls"}
    return FalJob(request, deliver, two_experts=(app == WAN22_APP), sync_mode=data.sync_mode,
                  media_fields=media_fields)


# GenerationRequest field -> fal field, for errors raised after translation.
REQUEST_TO_FAL = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "width": "resolution", "height": "resolution",
    "num_frames": "num_frames", "fps": "frames_per_second", "steps": "num_inference_steps",
    "guidance": "guidance_scale", "shift": "shift", "sampler": "sampler", "seed": "seed", "video": "video_url",
    "mask": "mask_video_url", "first_frame": "first_frame_url", "last_frame": "last_frame_url",
    "reference_images": "ref_image_urls", "preset": "acceleration", "task": "task", "task_options": "preprocess",
    "interpolated_frames": "num_interpolated_frames", "interpolator": "interpolator_model",
    "temporal_downsample": "temporal_downsample_factor", "auto_downsample": "enable_auto_downsample",
    "auto_downsample_min_fps": "auto_downsample_min_fps", "expand_prompt": "enable_prompt_expansion",
}


def fal_field(request_field: str, media_fields: dict[str, str] | None = None) -> str:
    """The fal name of a GenerationRequest field (reference_images[2] -> ref_image_urls.2)."""
    base, _, index = request_field.partition("[")
    name = (media_fields or {}).get(base) or REQUEST_TO_FAL.get(base, base)
    return f"{name}.{index.rstrip(']')}" if index else name


def file_json(url: str, content_type: str, file_name: str, file_size: int) -> dict[str, Any]:
    return {"url": url, "content_type": content_type, "file_name": file_name, "file_size": file_size}


def video_file_json(output: dict[str, Any], url: str) -> dict[str, Any]:
    """The VideoFile of a finished prediction's stored output."""
    return {**file_json(url, output.get("content_type", "video/mp4"), output["file_name"], output["file_size"]),
            "width": output["width"], "height": output["height"], "fps": output["fps"],
            "duration": output.get("duration"), "num_frames": output["num_frames"]}


def output_json(prompt: str, output: dict[str, Any], video_url: str, zip_url: str | None) -> dict[str, Any]:
    """fal's output object: {video, prompt, seed, frames_zip?}."""
    body: dict[str, Any] = {"video": video_file_json(output, video_url), "prompt": prompt, "seed": output["seed"]}
    frames_zip = output.get("frames_zip")
    if frames_zip and zip_url:
        body["frames_zip"] = file_json(zip_url, frames_zip["content_type"], frames_zip["file_name"],
                                       frames_zip["file_size"])
    return body
