"""The demo render cap: render at most N pixels on the longer side, then resize the video to the requested size.

The tiny random-weight models make noise; rendering it small keeps `vace serve --model tiny` and
`vace generate --model tiny` at any requested size (e.g. 832*480, 81 frames) fast on a CPU.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vace.pipelines.media.codec import resize_frames, write_mp4

TINY_RENDER_SIDE = 256


def default_render_side(only_tiny_models: bool, requested: int | None) -> int:
    """The cap as given (0 = none); unset: TINY_RENDER_SIDE when every model rendered on is a tiny one."""
    if requested is not None:
        return requested
    return TINY_RENDER_SIDE if only_tiny_models else 0


def capped_request(request: Any, max_side: int | None) -> Any:
    """Shrink width/height so the longer side is at most max_side (multiples of 16, aspect kept)."""
    if not max_side or max(request.width, request.height) <= max_side:
        return request
    scale = max_side / max(request.width, request.height)

    def snap(v: int) -> int:
        return max(16, int(v * scale) // 16 * 16)

    return dataclasses.replace(request, width=snap(request.width), height=snap(request.height))


def resize_result(result: Any, width: int, height: int) -> Any:
    """A RenderResult at (width, height): its frames resized and its mp4 rewritten in place."""
    if (result.width, result.height) == (width, height):
        return result
    frames = resize_frames(result.frames, width, height)
    write_mp4(frames, result.path, result.fps)
    return dataclasses.replace(result, frames=frames, width=width, height=height)
