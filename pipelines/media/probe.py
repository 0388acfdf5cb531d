"""Size, frame count and fps of an input video or image, read before rendering (for `auto` sizes)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from vace.pipelines.media.fetch import FetchPolicy, materialize
from vace.pipelines.media.sniff import VIDEO, inspect_media


@dataclass
class MediaInfo:
    """What is known about an input video or image before rendering."""

    width: int
    height: int
    num_frames: int | None = None  # None for images
    fps: float | None = None


def probe_media(ref: str, field_name: str, policy: FetchPolicy) -> MediaInfo:
    """Materialize `ref` (already checked by the prediction service), sniff it and read its geometry.

    Raises pipelines.request.RequestError naming `field_name` when it is not a usable image or video.
    """
    with tempfile.TemporaryDirectory(prefix="vace-probe-") as tmp:
        facts = inspect_media(materialize(ref, field_name, Path(tmp), policy), field_name, count_frames=True)
    if facts.kind == VIDEO:
        return MediaInfo(facts.width, facts.height, facts.num_frames, facts.fps)
    return MediaInfo(facts.width, facts.height)
