"""Weight-free control signals: grayscale (colorization task) and moving-box layout frames."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vace.pipelines.conditioning.annotators.base import ProgressFn

# ITU-R BT.601 luma, as cv2.COLOR_RGB2GRAY (the official VACE gray annotator).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class GrayAnnotator:
    name = "gray"

    def __call__(self, frames: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        luma = frames.astype(np.float32) @ LUMA
        if progress:
            progress(len(frames), len(frames))
        return np.repeat(luma[..., None], 3, axis=-1)


Box = Sequence[float]


def interpolate_boxes(boxes: Sequence[Box], num_frames: int) -> np.ndarray:
    """Integer (x1, y1, x2, y2) per frame, moving linearly through the key boxes (first frame = first box,
    last frame = last box, keys evenly spaced), truncated to int like the official layout annotator."""
    keys = np.asarray(boxes, dtype=np.float64)
    key_times = np.linspace(0, num_frames - 1, len(keys))
    t = np.arange(num_frames)
    out = np.stack([np.interp(t, key_times, keys[:, i]) for i in range(4)], axis=1)
    return out.astype(np.int64)


def layout_frames(boxes: Sequence[Box], num_frames: int, width: int, height: int,
                  thickness: int = 2) -> np.ndarray:
    """White frames with a black `thickness`-px box outline drawn inside (x1, y1)-(x2, y2) (inclusive)."""
    frames = np.ones((num_frames, height, width, 3), dtype=np.float32)
    for frame, (x1, y1, x2, y2) in zip(frames, interpolate_boxes(boxes, num_frames), strict=True):
        x1, x2 = sorted((int(np.clip(x1, 0, width - 1)), int(np.clip(x2, 0, width - 1))))
        y1, y2 = sorted((int(np.clip(y1, 0, height - 1)), int(np.clip(y2, 0, height - 1))))
        frame[y1:y1 + thickness, x1:x2 + 1] = 0
        frame[max(y1, y2 - thickness + 1):y2 + 1, x1:x2 + 1] = 0
        frame[y1:y2 + 1, x1:x1 + thickness] = 0
        frame[y1:y2 + 1, max(x1, x2 - thickness + 1):x2 + 1] = 0
    return frames
