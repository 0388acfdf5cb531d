"""Size, frame count and fps of an input video or image, read before rendering (for `auto` sizes)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from vace.pipelines.job.request import RequestError
from vace.pipelines.media.codec import is_image
from vace.pipelines.media.fetch import FetchPolicy, materialize


@dataclass
class MediaInfo:
    """What is known about an input video or image before rendering."""

    width: int
    height: int
    num_frames: int | None = None  # None for images
    fps: float | None = None



def probe_media(ref: str, field_name: str, policy: FetchPolicy) -> MediaInfo:
    """Materialize `ref` (already checked by the prediction service) and read its geometry.

    Raises pipelines.request.RequestError naming `field_name` when it cannot be read.
    """
    import imageio_ffmpeg
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="vace-probe-") as tmp:
        path = materialize(ref, field_name, Path(tmp), policy)
        if is_image(path):
            with Image.open(path) as img:
                return MediaInfo(img.width, img.height)
        try:
            reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
            meta = next(reader)
            reader.close()
            frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
        except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as exc:
            raise RequestError(field_name, f"cannot decode video: {str(exc).splitlines()[0]}") from exc
        width, height = meta["size"]
        return MediaInfo(int(width), int(height), int(frames), float(meta.get("fps") or 16.0))
