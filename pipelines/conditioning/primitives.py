"""The VACE conditioning triple (video, mask, reference images) and the primitives tasks build it from.

Conventions (../shared/specs/vace-tasks.md): video frames in [0, 1] with 0.5 = neutral gray ("generate
here"), mask 1 = generate / 0 = keep, reference images fitted and centred on a white canvas of the
output size. Everything is exactly the output size before it reaches the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from vace.pipelines.media.codec import Video, image_to_array, resize_frames

GRAY = 0.5


@dataclass
class TaskInputs:
    """Decoded user media for one request, before any task-specific shaping."""

    width: int
    height: int
    num_frames: int
    video: Video | None = None
    mask_video: np.ndarray | None = None  # (F, H, W) uint8 (or float in [0, 1]) at decoded size
    mask_image: np.ndarray | None = None  # (H, W) in [0, 1] at source size
    reference_images: list[Image.Image] = field(default_factory=list)
    first_frame: Image.Image | None = None
    last_frame: Image.Image | None = None
    options: dict = field(default_factory=dict)


@dataclass
class Conditioning:
    """What is handed to WanVACEPipeline: video (F,H,W,3), mask (F,H,W), refs (PIL, output size)."""

    video: np.ndarray
    mask: np.ndarray
    reference_images: list[Image.Image]
    fps: float | None = None  # set when the task takes the fps from the input video

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])


def gray_frames(num_frames: int, width: int, height: int) -> np.ndarray:
    return np.full((num_frames, height, width, 3), GRAY, dtype=np.float32)


def mask_frames(num_frames: int, width: int, height: int, value: float = 1.0) -> np.ndarray:
    return np.full((num_frames, height, width), value, dtype=np.float32)


def binarize(mask: np.ndarray) -> np.ndarray:
    """Threshold at 0.5 (one channel): 1 = generate, 0 = keep."""
    if mask.ndim == 4:
        mask = mask.mean(axis=-1)
    return (mask >= 0.5).astype(np.float32)


def fit_image(img: Image.Image, width: int, height: int, background: tuple[int, int, int]) -> Image.Image:
    """Fit img into width x height keeping its aspect (bilinear), centred on a solid background."""
    src = img.convert("RGBA")
    scale = min(width / src.width, height / src.height)
    nw, nh = max(1, int(src.width * scale)), max(1, int(src.height * scale))
    resized = src.resize((nw, nh), Image.BILINEAR)
    canvas = Image.new("RGBA", (width, height), (*background, 255))
    canvas.alpha_composite(resized, ((width - nw) // 2, (height - nh) // 2))
    return canvas.convert("RGB")


def reference_canvas(images: list[Image.Image], width: int, height: int) -> list[Image.Image]:
    """Reference images fitted and centred on a white canvas of the output size."""
    return [fit_image(img, width, height, (255, 255, 255)) for img in images]


def frame_from_image(img: Image.Image, width: int, height: int) -> np.ndarray:
    """An image as one (H, W, 3) frame of exactly the output size (cover-resize, centre-crop)."""
    return resize_frames(image_to_array(img)[None], width, height)[0]


def default_conditioning(inputs: TaskInputs) -> Conditioning:
    """No source video: all gray, all ones (text- or reference-to-video)."""
    n, w, h = inputs.num_frames, inputs.width, inputs.height
    return Conditioning(gray_frames(n, w, h), mask_frames(n, w, h),
                        reference_canvas(inputs.reference_images, w, h))
