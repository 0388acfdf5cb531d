"""What is done with a rendered video before it is handed out: encoder settings, frames zip, safety check.

`DeliverOptions` travels with a prediction (dialect-free); `deliver()` runs after Renderer.render()
and returns the extra output entries. Encoder settings are the `quality` / `preset` of
pipelines.media.write_mp4 (libx264 CRF = int((1 - quality / 10) * 51), x264 preset).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_QUALITY = 8.0  # write_mp4's default: CRF 10
DEFAULT_PRESET = "medium"


@dataclass
class DeliverOptions:
    quality: float = DEFAULT_QUALITY
    preset: str = DEFAULT_PRESET
    frames_zip: bool = False
    safety_check: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DeliverOptions:
        data = data or {}
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def crf(quality: float) -> int:
    """The libx264 CRF imageio-ffmpeg derives from a 0..10 quality."""
    return int((1 - quality / 10.0) * 51)


def deliver(frames: np.ndarray | None, video_path: Path, fps: float, options: DeliverOptions,
            out_dir: Path, stem: str, device: str = "cpu") -> dict[str, Any]:
    """Re-encode with the asked encoder settings (only when they differ from the render's), write the
    frames zip and run the safety checker. Returns {"encoder", "frames_zip"?, "safety"?} for the output."""
    from vace.pipelines.media.codec import write_mp4

    extra: dict[str, Any] = {"encoder": {"crf": crf(options.quality), "preset": options.preset}}
    if frames is not None and (options.quality != DEFAULT_QUALITY or options.preset != DEFAULT_PRESET):
        write_mp4(frames, video_path, fps, quality=options.quality, preset=options.preset)
    if options.frames_zip and frames is not None:
        from vace.pipelines.media.frames_zip import write_frames_zip

        zip_path = write_frames_zip(frames, out_dir / f"{stem}-frames.zip")
        extra["frames_zip"] = {"path": f"{out_dir.name}/{zip_path.name}", "file_name": zip_path.name,
                               "file_size": zip_path.stat().st_size, "content_type": "application/zip"}
    if options.safety_check:
        from vace.pipelines.outputs.safety import check_video_frames

        extra["safety"] = check_video_frames(frames, device=device).to_dict()
    return extra
