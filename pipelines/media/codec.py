"""Decode images and videos into frames, and write frames to H.264 mp4.

Decoded videos stay uint8, scaled down in the decoder to the size the job needs, so a long 1080p source for
a 480p job never exists in memory at its own resolution or as float32. Frames handed to the pipeline are
float32 in [0, 1]: video (F, H, W, 3), mask (F, H, W); resize_frames() makes them from either kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, UnidentifiedImageError

from vace.pipelines.job.request import RequestError

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif", ".m4v")
RESIZE_CHUNK = 8  # frames resized at a time: bounds the float32 working set whatever the clip length


class _ScaledOnPurpose(logging.Filter):
    """imageio-ffmpeg warns whenever the frames it reads differ in size from the source; ours do by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("The frame size for reading")


logging.getLogger("imageio_ffmpeg").addFilter(_ScaledOnPurpose())


@dataclass
class Video:
    frames: np.ndarray  # (F, H, W, 3) uint8 as decoded; float32 in [0, 1] is accepted too (frames built in memory)
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


def cover_scale_filter(width: int, height: int) -> str:
    """An ffmpeg filter scaling a frame down, aspect kept, to the smallest size that still covers width x height
    (what a cover-resize to that size needs); frames already that small are left alone."""
    return (f"scale=w='min(iw,{width})':h='min(ih,{height})':force_original_aspect_ratio=increase"
            ":flags=area")


def load_video(path: Path, field_name: str, max_frames: int | None = None, fit: tuple[int, int] | None = None,
               gray: bool = False) -> Video:
    """Decode a video with imageio-ffmpeg into uint8 frames, one frame at a time into one growing buffer.

    fit=(width, height): the decoder scales each frame down to cover that size (cover_scale_filter).
    gray: one channel per frame, the mean of R, G and B (how masks are read): (F, H, W).
    """
    output_params = ["-vf", cover_scale_filter(*fit)] if fit else None
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=output_params)
        meta = next(reader)
        width, height = meta["size"]
        frames = _FrameBuffer((height, width) if gray else (height, width, 3), max_frames, meta.get("duration"),
                              meta.get("fps"))
        for raw in reader:
            frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
            frames.append(_channel_mean(frame) if gray else frame)
            if max_frames and len(frames) >= max_frames:
                break
        reader.close()
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as exc:
        raise RequestError(field_name, f"cannot decode video {path.name}: {str(exc).splitlines()[0]}") from exc
    if not len(frames):
        raise RequestError(field_name, f"video {path.name} has no frames")
    return Video(frames.array(), float(meta.get("fps") or 16.0))


def _channel_mean(frame: np.ndarray) -> np.ndarray:
    """Mean of the three channels, rounded to uint8 (the rounding never moves a value across 127.5)."""
    return ((frame.sum(axis=-1, dtype=np.uint16) + 1) // 3).astype(np.uint8)


class _FrameBuffer:
    """Frames appended into one preallocated uint8 array (sized from the frame limit or the container's
    duration), doubled when a stream runs longer: no list of frames stacked into a second copy at the end."""

    def __init__(self, frame_shape: tuple[int, ...], max_frames: int | None, duration: float | None,
                 fps: float | None):
        expected = int(duration * fps) + 2 if duration and fps and duration * fps < 1e6 else 64
        self._data = np.empty((min(max_frames or expected, expected), *frame_shape), np.uint8)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, frame: np.ndarray) -> None:
        if self._count == len(self._data):
            grown = np.empty((2 * len(self._data), *self._data.shape[1:]), np.uint8)
            grown[:self._count] = self._data
            self._data = grown
        self._data[self._count] = frame
        self._count += 1

    def array(self) -> np.ndarray:
        # A view: the unused tail of np.empty was never written, so it never became resident memory.
        return self._data[:self._count]


def from_uint8(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / 255.0


def as_float(frames: np.ndarray) -> np.ndarray:
    """uint8 frames -> float32 in [0, 1]; float frames as they are (float32)."""
    return from_uint8(frames) if frames.dtype == np.uint8 else frames.astype(np.float32, copy=False)


def image_to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def resize_frames(frames: np.ndarray, width: int, height: int, mode: str = "cover") -> np.ndarray:
    """Resize (F, H, W[, C]) frames (uint8 or float in [0, 1]) to exactly (height, width), float32 in [0, 1].

    cover: keep aspect, scale to cover, centre-crop (default for video-to-video tasks);
    stretch: scale each axis independently.
    Always a new array (callers may fill it in place). Works RESIZE_CHUNK frames at a time, so only the float32
    result is ever held whole.
    """
    h, w = frames.shape[1:3]
    if (h, w) == (height, width):
        return from_uint8(frames) if frames.dtype == np.uint8 else frames.astype(np.float32)
    out = np.empty((len(frames), height, width, *frames.shape[3:]), np.float32)
    for start in range(0, len(frames), RESIZE_CHUNK):
        out[start:start + RESIZE_CHUNK] = _resize_chunk(as_float(frames[start:start + RESIZE_CHUNK]), width,
                                                        height, mode)
    return out


def _resize_chunk(frames: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    import torch  # torch loads only where tensors are used (the API process never needs it)
    import torch.nn.functional as F  # torch loads only where tensors are used (the API process never needs it)

    squeeze = frames.ndim == 3
    x = torch.from_numpy(np.ascontiguousarray(frames[..., None] if squeeze else frames)).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if mode == "cover":
        scale = max(width / w, height / h)
        nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
        if (nh, nw) != (h, w):
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
    """Frame count, size and fps of a written video, counted by decoding it (frames are not kept)."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="gray", bits_per_pixel=8)
    meta = next(reader)
    count = sum(1 for _ in reader)
    width, height = meta["size"]
    return {"num_frames": count, "width": width, "height": height, "fps": float(meta.get("fps") or 16.0)}
