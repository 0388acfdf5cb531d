"""Tasks that place given frames in time: t2v, r2v, first/last frame, clip extension."""

from __future__ import annotations

from vace.pipelines.conditioning.primitives import (
    Conditioning,
    TaskInputs,
    default_conditioning,
    gray_frames,
    mask_frames,
)
from vace.pipelines.conditioning.tasks.registry import TaskContext, task
from vace.pipelines.conditioning.tasks.sources import image_at_output, references
from vace.pipelines.job.request import RequestError
from vace.pipelines.media.codec import resize_frames
from vace.pipelines.media.transparency import frame_and_mask, has_alpha


@task("t2v", "text to video: all gray, mask all ones")
def text_to_video(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    return default_conditioning(inputs)


@task("r2v", "reference images to video: all gray, mask all ones, references on white")
def reference_to_video(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    references(inputs, required=True, task="r2v")
    return default_conditioning(inputs)


def _slot(img, inputs: TaskInputs, ctx: TaskContext):
    """An image placed as one frame: (frame, mask). Images with alpha follow task_options.transparency_mode
    (content_aware: transparent pixels are generated; white / black: filled), see pipelines.transparency."""
    if not has_alpha(img):
        return image_at_output(img, inputs), 0.0
    return frame_and_mask(img, ctx.options.transparency_mode, inputs.width, inputs.height)


def frame_slots(inputs: TaskInputs, ctx: TaskContext, first: bool, last: bool) -> Conditioning:
    n, w, h = inputs.num_frames, inputs.width, inputs.height
    video, mask = gray_frames(n, w, h), mask_frames(n, w, h)
    if first:
        if inputs.first_frame is None:
            raise RequestError("first_frame", "this task needs a first frame image")
        video[0], mask[0] = _slot(inputs.first_frame, inputs, ctx)
    if last:
        if inputs.last_frame is None:
            raise RequestError("last_frame", "this task needs a last frame image")
        video[-1], mask[-1] = _slot(inputs.last_frame, inputs, ctx)
    return Conditioning(video, mask, references(inputs))


@task("firstframe", "[image, gray...], mask [0, 1...]")
def first_frame(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    return frame_slots(inputs, ctx, first=True, last=False)


@task("lastframe", "[gray..., image], mask [1..., 0]")
def last_frame(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    return frame_slots(inputs, ctx, first=False, last=True)


@task("firstlastframe", "[image1, gray..., image2], mask [0, 1..., 0]")
def first_last_frame(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    return frame_slots(inputs, ctx, first=True, last=True)


def extend(inputs: TaskInputs, ctx: TaskContext, position: str) -> Conditioning:
    """The clip's first k frames (clip_frames, default all, at most N-1) placed first or last; the rest gray/1."""
    if inputs.video is None:
        raise RequestError("video", "extension needs a source clip (video)")
    n, w, h = inputs.num_frames, inputs.width, inputs.height
    k = min(ctx.options.clip_frames or len(inputs.video.frames), len(inputs.video.frames))
    if k > n - 1:
        if ctx.options.clip_frames:
            raise RequestError("task_options.clip_frames",
                               f"at most num_frames - 1 = {n - 1} clip frames leave something to generate, got {k}")
        k = n - 1
    clip = resize_frames(inputs.video.frames[:k], w, h)
    video, mask = gray_frames(n, w, h), mask_frames(n, w, h)
    where = slice(0, k) if position == "first" else slice(n - k, n)
    video[where], mask[where] = clip, 0.0
    return Conditioning(video, mask, references(inputs))


@task("extension", "given clip then gray (clip_position=first) or gray then clip (last); mask 0 on the clip")
def extension(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    return extend(inputs, ctx, ctx.options.clip_position)


@task("firstclip", "extension with the clip first (continue the clip)")
def first_clip(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    return extend(inputs, ctx, "first")


@task("lastclip", "extension with the clip last (generate what leads into it)")
def last_clip(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    return extend(inputs, ctx, "last")
