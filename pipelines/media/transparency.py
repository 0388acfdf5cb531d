"""First/last frame images with an alpha channel (fal's `transparency_mode`).

content_aware: transparent pixels become "generate here" (neutral gray, mask 1); opaque pixels are kept.
white / black: the image is composited over a solid white or black background and kept whole.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vace.pipelines.media.codec import resize_frames

MODES = ("content_aware", "white", "black")
GRAY = 0.5


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info


def flatten(img: Image.Image, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (H, W, 3) float [0, 1], mask (H, W) float: 1 = generate, 0 = keep) at the image's own size."""
    if mode not in MODES:
        raise ValueError(f"transparency_mode must be one of {', '.join(MODES)}, got {mode!r}")
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if not has_alpha(img):
        return np.ascontiguousarray(rgb), np.zeros(alpha.shape[:2], np.float32)
    if mode == "content_aware":
        transparent = alpha[..., 0] < 0.5
        out = np.where(transparent[..., None], np.float32(GRAY), rgb)
        return out.astype(np.float32), transparent.astype(np.float32)
    background = 1.0 if mode == "white" else 0.0
    out = rgb * alpha + background * (1.0 - alpha)
    return out.astype(np.float32), np.zeros(alpha.shape[:2], np.float32)


def frame_and_mask(img: Image.Image, mode: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """flatten() then cover-resize to exactly (height, width); the mask is re-binarised after resizing."""
    rgb, mask = flatten(img, mode)
    frame = resize_frames(rgb[None], width, height)[0]
    mask = (resize_frames(mask[None], width, height)[0] >= 0.5).astype(np.float32)
    if mode == "content_aware":
        frame = np.where(mask[..., None] > 0.5, np.float32(GRAY), frame).astype(np.float32)
    return frame, mask
