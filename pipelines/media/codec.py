"""Decode images and videos into float frames, and write frames to H.264 mp4.

Frames are float32 numpy arrays in [0, 1]: video (F, H, W, 3), mask (F, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vace.pipelines.job.request import RequestError

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif", ".m4v")


@dataclass
class Video:
    frames: np.ndarray  # (F, H, W, 3) float32 in [0, 1]
    fps: float


def load_image(path: Path, field_name: str) -> Image.Image:
    """Open an image with Pillow (alpha kept as RGBA, everything else as RGB)."""
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise RequestError(field_name, f"cannot decode image {path.name}: {exc}") from exc
    return img.convert("RGBA") if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info else img.convert(
        "RGB")


def is_image(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            return img.format not in ("GIF",) or getattr(img, "n_frames", 1) == 1
    except (UnidentifiedImageError, OSError):
        return False


def load_video(path: Path, field_name: str, max_frames: int | None = None) -> Video:
    """Decode a video with imageio-ffmpeg into RGB float frames."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        width, height = meta["size"]
        frames = []
        for raw in reader:
            frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
            if max_frames and len(frames) >= max_frames:
                break
        reader.close()
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as exc:
        raise RequestError(field_name, f"cannot decode video {path.name}: {str(exc).splitlines()[0]}") from exc
    if not frames:
        raise RequestError(field_name, f"video {path.name} has no frames")
    return Video(np.stack(frames).astype(np.float32) / 255.0, float(meta.get("fps") or 16.0))


def image_to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def resize_frames(frames: np.ndarray, width: int, height: int, mode: str = "cover") -> np.ndarray:
    """Resize (F, H, W[, C]) frames to exactly (height, width).

    cover: keep aspect, scale to cover, centre-crop (default for video-to-video tasks);
    stretch: scale each axis independently.
    """
    import torch
    import torch.nn.functional as F

    squeeze = frames.ndim == 3
    x = torch.from_numpy(np.ascontiguousarray(frames[..., None] if squeeze else frames)).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return frames
    if mode == "cover":
        scale = max(width / w, height / h)
        nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - height) // 2, (nw - width) // 2
        x = x[:, :, top:top + height, left:left + width]
    else:
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    out = x.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    return out[..., 0] if squeeze else out


def fit_frame_count(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """Take the first num_frames frames; a shorter clip is padded by repeating its last frame."""
    if len(frames) >= num_frames:
        return frames[:num_frames]
    pad = np.repeat(frames[-1:], num_frames - len(frames), axis=0)
    return np.concatenate([frames, pad], axis=0)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_mp4(frames: np.ndarray, path: Path, fps: float, quality: float | None = 8.0,
              preset: str = "medium") -> Path:
    """Write (F, H, W, 3) frames ([0,1] float or uint8) as H.264 yuv420p at fps."""
    import imageio_ffmpeg

    data = frames if frames.dtype == np.uint8 else to_uint8(frames)
    n, h, w, _ = data.shape
    params = ["-preset", preset, "-movflags", "+faststart"]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         quality=quality, macro_block_size=1, output_params=params,
                                         ffmpeg_log_level="error")
    writer.send(None)
    for frame in data:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def probe_video(path: Path) -> dict:
    """Decode a written video and return its frame count, size and fps (used by tests and API outputs)."""
    video = load_video(path, "video")
    n, h, w, _ = video.frames.shape
    return {"num_frames": n, "width": w, "height": h, "fps": video.fps}
