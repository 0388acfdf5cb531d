"""Shaping the user's media to the output: exact size and frame count, binarised masks, reference canvases."""

from __future__ import annotations

import numpy as np

from vace.pipelines.conditioning.primitives import (
    Conditioning,
    TaskInputs,
    frame_from_image,
    mask_frames,
    reference_canvas,
)
from vace.pipelines.job.request import RequestError
from vace.pipelines.media.codec import as_float, fit_frame_count, image_to_array, resize_frames


def source_video(inputs: TaskInputs, field: str = "video") -> np.ndarray:
    """The input video at exactly the output size (cover-resize, centre-crop) and frame count."""
    return resize_frames(source_frames(inputs, field), inputs.width, inputs.height)


def source_frames(inputs: TaskInputs, field: str = "video") -> np.ndarray:
    """The input video at its decoded size and dtype, cut or padded to the output frame count."""
    if inputs.video is None:
        raise RequestError(field, "this task needs a source video")
    return fit_frame_count(inputs.video.frames, inputs.num_frames)


def mask_image_at_output(inputs: TaskInputs) -> np.ndarray:
    """The mask image cover-resized like the video and binarised: (H, W)."""
    assert inputs.mask_image is not None
    mask = resize_frames(inputs.mask_image[None].astype(np.float32), inputs.width, inputs.height, mode="cover")[0]
    return (mask >= 0.5).astype(np.float32)


def mask_video_at_output(inputs: TaskInputs) -> np.ndarray:
    """The mask video (or the mask image on every frame) at exactly the output size, binarised: (F, H, W)."""
    if inputs.mask_video is not None:
        mask = fit_frame_count(inputs.mask_video, inputs.num_frames)
        mask = resize_frames(mask, inputs.width, inputs.height, mode="cover")
        mask[:] = mask >= 0.5  # binarised in place: the float mask is never copied
        return mask
    if inputs.mask_image is not None:
        return np.repeat(mask_image_at_output(inputs)[None], inputs.num_frames, axis=0)
    raise RequestError("mask", "this task needs a mask video or mask image")


def references(inputs: TaskInputs, required: bool = False, task: str = "") -> list:
    if required and not inputs.reference_images:
        raise RequestError("reference_images", f"task {task} needs at least one reference image")
    return reference_canvas(inputs.reference_images, inputs.width, inputs.height)


def control(inputs: TaskInputs, video: np.ndarray, refs: list | None = None) -> Conditioning:
    """A control video: mask all ones (everything is generated, guided by the frames); refs default to
    references(inputs)."""
    n, h, w = video.shape[:3]
    return Conditioning(video.astype(np.float32), mask_frames(n, w, h), references(inputs) if refs is None else refs)


def still_image(inputs: TaskInputs, field: str) -> np.ndarray:
    """first_frame (or the source video's first frame) as an (H, W, 3) array at its own size."""
    img = inputs.first_frame if field == "first_frame" else inputs.last_frame
    if img is not None:
        return image_to_array(img)
    if inputs.video is not None:
        return as_float(inputs.video.frames[0])
    raise RequestError(field, "this task needs an image (first_frame) or a source video")


def image_at_output(img, inputs: TaskInputs) -> np.ndarray:
    return frame_from_image(img, inputs.width, inputs.height)
