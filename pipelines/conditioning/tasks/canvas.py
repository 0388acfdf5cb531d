"""Tasks that change the canvas: outpainting (per side + expand_ratio), reframe (new aspect, trim, zoom)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vace.pipelines.conditioning.annotators.simple import LUMA
from vace.pipelines.conditioning.primitives import GRAY, Conditioning, TaskInputs
from vace.pipelines.conditioning.tasks.registry import TaskContext, task
from vace.pipelines.conditioning.tasks.sources import references, source_frames
from vace.pipelines.media.codec import as_float, resize_frames

BORDER_LUMA = 16 / 255  # rows/columns darker than this over the whole clip count as letterbox borders


@dataclass(frozen=True)
class Placement:
    """Where the source lands in the output: pixel rectangle [x0, x1) x [y0, y1) (may reach past the edges)."""

    x0: int
    y0: int
    x1: int
    y1: int


def outpaint_placement(src_w: int, src_h: int, out_w: int, out_h: int, sides: dict[str, bool],
                       ratio: float) -> Placement:
    """The source enlarged by int(ratio * width) on each chosen left/right side and int(ratio * height) on each
    chosen top/bottom side, that canvas fitted into the output keeping its aspect (any remaining margin is
    generated too)."""
    left = int(ratio * src_w) if sides["left"] else 0
    right = int(ratio * src_w) if sides["right"] else 0
    top = int(ratio * src_h) if sides["top"] else 0
    bottom = int(ratio * src_h) if sides["bottom"] else 0
    canvas_w, canvas_h = src_w + left + right, src_h + top + bottom
    scale = min(out_w / canvas_w, out_h / canvas_h)
    ox = (out_w - canvas_w * scale) / 2 + left * scale
    oy = (out_h - canvas_h * scale) / 2 + top * scale
    x0, y0 = round(ox), round(oy)
    return Placement(x0, y0, max(x0 + 1, round(ox + src_w * scale)), max(y0 + 1, round(oy + src_h * scale)))


def reframe_placement(src_w: int, src_h: int, out_w: int, out_h: int, zoom: float) -> Placement:
    """Centred; zoom 0 = whole source visible (contain), 1 = source covers the output (cropped), linear between."""
    contain, cover = min(out_w / src_w, out_h / src_h), max(out_w / src_w, out_h / src_h)
    scale = contain + zoom * (cover - contain)
    w, h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    x0, y0 = (out_w - w) // 2, (out_h - h) // 2
    return Placement(x0, y0, x0 + w, y0 + h)


def paste(frames: np.ndarray, place: Placement, out_w: int, out_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames resized into `place` on a gray canvas; mask 1 where nothing of the source landed."""
    n = len(frames)
    video = np.full((n, out_h, out_w, 3), GRAY, dtype=np.float32)
    mask = np.ones((n, out_h, out_w), dtype=np.float32)
    resized = resize_frames(frames, place.x1 - place.x0, place.y1 - place.y0, mode="stretch")
    cx0, cy0 = max(place.x0, 0), max(place.y0, 0)
    cx1, cy1 = min(place.x1, out_w), min(place.y1, out_h)
    video[:, cy0:cy1, cx0:cx1] = resized[:, cy0 - place.y0:cy1 - place.y0, cx0 - place.x0:cx1 - place.x0]
    mask[:, cy0:cy1, cx0:cx1] = 0.0
    return video, mask


def border_crop(frames: np.ndarray, threshold: float = BORDER_LUMA) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) without the dark letterbox/pillarbox bars: edge rows/columns whose brightest pixel over
    the whole clip stays below threshold. The full frame when nothing (or everything) is dark."""
    brightest = np.zeros(frames.shape[1:3], np.float32)
    for frame in frames:  # one frame in float at a time
        np.maximum(brightest, as_float(frame) @ LUMA, out=brightest)
    rows, cols = np.flatnonzero(brightest.max(axis=1) > threshold), np.flatnonzero(brightest.max(axis=0) > threshold)
    h, w = brightest.shape
    if rows.size == 0 or cols.size == 0:
        return 0, 0, w, h
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def outpaint_frames(frames: np.ndarray, inputs: TaskInputs, ctx: TaskContext) -> tuple[np.ndarray, np.ndarray]:
    sides = ctx.options.sides()
    if not any(sides.values()):  # none chosen: all four, as the official VACE outpainting preprocessor does
        sides = dict.fromkeys(sides, True)
    h, w = frames.shape[1:3]
    place = outpaint_placement(w, h, inputs.width, inputs.height, sides, ctx.options.expand_ratio)
    return paste(frames, place, inputs.width, inputs.height)


@task("outpainting", "source on a gray canvas enlarged by expand_ratio on the chosen sides (none chosen: all four); "
                     "mask 1 on the border")
def outpainting(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    video, mask = outpaint_frames(source_frames(inputs), inputs, ctx)
    return Conditioning(video, mask, references(inputs))


@task("reframe", "source re-cut to the output aspect (trim_borders, zoom_factor); new areas gray, mask 1")
def reframe(inputs: TaskInputs, ctx: TaskContext) -> Conditioning:
    frames = source_frames(inputs)
    if ctx.options.trim_borders:
        x0, y0, x1, y1 = border_crop(frames)
        frames = frames[:, y0:y1, x0:x1]
    h, w = frames.shape[1:3]
    place = reframe_placement(w, h, inputs.width, inputs.height, ctx.options.zoom_factor)
    video, mask = paste(frames, place, inputs.width, inputs.height)
    return Conditioning(video, mask, references(inputs))
