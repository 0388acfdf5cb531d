"""Synthetic media made inside the tests: moving squares, solid images, masks, data URIs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from vace.pipelines.media.codec import write_mp4


def moving_square_frames(n: int, width: int, height: int, size: int = 16, step: int = 2,
                         color: tuple[int, int, int] = (255, 32, 32)) -> np.ndarray:
    """(n, H, W, 3) uint8: a square moving right by `step` px a frame over a dark-blue background."""
    frames = np.zeros((n, height, width, 3), np.uint8)
    frames[...] = (16, 32, 96)
    for k in range(n):
        x = (4 + k * step) % max(1, width - size)
        y = (height - size) // 2
        frames[k, y:y + size, x:x + size] = color
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = 16) -> Path:
    write_mp4(frames, path, fps, quality=10)
    return path


def mask_frames_box(n: int, width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """(n, H, W, 3) uint8 mask video: white inside box=(x0, y0, x1, y1), black elsewhere."""
    x0, y0, x1, y1 = box
    frames = np.zeros((n, height, width, 3), np.uint8)
    frames[:, y0:y1, x0:x1] = 255
    return frames


def solid_image(width: int, height: int, color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def save_image(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def data_uri(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()
