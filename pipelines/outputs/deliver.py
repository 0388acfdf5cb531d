"""What is done with a rendered video before it is handed out: encoder settings, frames zip, safety check.

`deliver()` runs after Renderer.render() with the job's DeliverOptions (pipelines/job/delivery.py)
and returns the extra output entries. Encoder settings are the `quality` / `preset` of
pipelines.media.write_mp4 (libx264 CRF = int((1 - quality / 10) * 51), x264 preset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vace.pipelines.job.delivery import DEFAULT_PRESET, DEFAULT_QUALITY, DeliverOptions
from vace.pipelines.media.codec import write_mp4
from vace.pipelines.media.frames_zip import write_frames_zip
from vace.pipelines.outputs.safety import SafetyConfig, check_video_frames


def crf(quality: float) -> int:
    """The libx264 CRF imageio-ffmpeg derives from a 0..10 quality."""
    return int((1 - quality / 10.0) * 51)


def deliver(frames: np.ndarray | None, video_path: Path, fps: float, options: DeliverOptions,
            out_dir: Path, stem: str, safety: SafetyConfig, device: str = "cpu") -> dict[str, Any]:
    """Re-encode with the asked encoder settings (only when they differ from the render's), write the
    frames zip and run the safety checker. Returns {"encoder", "frames_zip"?, "safety"?} for the output."""
    extra: dict[str, Any] = {"encoder": {"crf": crf(options.quality), "preset": options.preset}}
    if frames is not None and (options.quality != DEFAULT_QUALITY or options.preset != DEFAULT_PRESET):
        write_mp4(frames, video_path, fps, quality=options.quality, preset=options.preset)
    if options.frames_zip and frames is not None:
        zip_path = write_frames_zip(frames, out_dir / f"{stem}-frames.zip")
        extra["frames_zip"] = {"path": f"{out_dir.name}/{zip_path.name}", "file_name": zip_path.name,
                               "file_size": zip_path.stat().st_size, "content_type": "application/zip"}
    if options.safety_check:
        extra["safety"] = check_video_frames(frames, safety, device=device).to_dict()
    return extra
