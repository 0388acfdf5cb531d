"""A zip of a video's frames as numbered PNG files (fal's `return_frames_zip`)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from vace.pipelines.media.codec import to_uint8


def write_frames_zip(frames: np.ndarray, path: str | Path) -> Path:
    """Write (F, H, W, 3) frames ([0, 1] float or uint8) as frame_00000.png ... into a zip at path."""
    data = frames if frames.dtype == np.uint8 else to_uint8(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, frame in enumerate(data):
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG")
            zf.writestr(f"frame_{i:05d}.png", buf.getvalue())
    return path


def read_frames_zip(path: str | Path) -> np.ndarray:
    """The frames of a zip written by write_frames_zip, as (F, H, W, 3) uint8 in name order."""
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        return np.stack([np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in names])
