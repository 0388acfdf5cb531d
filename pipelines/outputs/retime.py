"""The outputs stage that changes the frame count: frames interpolated between the rendered ones.

After decoding and before the final encode, a prepared job whose TemporalPlan makes frames between rendered
pairs (temporal downsampling restored, num_interpolated_frames added) has them made by its interpolator on
the worker's device, is cut to the delivered length and rewritten at the delivered fps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from vace.pipelines.engine.render import CancelFn, Prepared, RenderResult
from vace.pipelines.media.codec import write_mp4
from vace.pipelines.outputs.interpolation import interpolate, load_interpolator

LogFn = Callable[[str], None]


def plan_metrics(prepared: Prepared) -> dict[str, Any]:
    """What the job's metrics say about its frame plan (empty when nothing was downsampled or interpolated)."""
    plan, req = prepared.plan, prepared.request
    if plan is None or not (plan.between or req.auto_downsample):
        return {}
    metrics: dict[str, Any] = {"temporal_downsample_factor": plan.factor, "rendered_frames": plan.rendered,
                               "interpolated_frames": plan.interpolate, "delivered_frames": plan.delivered}
    if plan.between:
        metrics["interpolator"] = req.interpolator
    return metrics


def helper_device(prepared: Prepared) -> str:
    if prepared.device and prepared.device != "auto":
        return str(prepared.device)
    import torch  # heavy; only asked when no device was given

    return "cuda" if torch.cuda.is_available() else "cpu"


def retime(result: RenderResult, prepared: Prepared, on_log: LogFn | None = None,
           should_cancel: CancelFn | None = None) -> RenderResult:
    """The render with the plan's in-between frames made and the mp4 rewritten (unchanged when the plan makes
    none). Logs `interpolating i/N` per rendered pair; RenderCancelled between pairs."""
    plan = prepared.plan
    metrics = {**result.metrics, **plan_metrics(prepared)}
    if plan is None or not plan.between or result.frames is None:
        return dataclasses.replace(result, metrics=metrics)
    started = time.perf_counter()
    device = helper_device(prepared)
    model = load_interpolator(prepared.request.interpolator, prepared.interpolator_dir, device)

    def progress(i: int, pairs: int) -> None:
        if on_log:
            on_log(f"interpolating {i}/{pairs}")

    frames = interpolate(result.frames, plan.between, model, progress, should_cancel, device)[:plan.delivered]
    fps = plan.delivered_fps(result.fps)
    write_mp4(frames, result.path, fps)
    timings = {**result.timings, "interpolate": time.perf_counter() - started}
    return dataclasses.replace(result, frames=frames, num_frames=len(frames), fps=fps, timings=timings,
                               metrics=metrics)
