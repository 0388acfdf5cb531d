"""MagCache calibration: measure a model's per-step residual magnitude ratios and store them beside its weights.

`vace calibrate --model DIR` renders one text-to-video job with every step computed, records
mean_t(|r_t| / |r_{t-1}|) per step for the cond and uncond passes, and writes
DIR/magcache_calibration.json. Presets use MagCache only for models that have this file; others fall
back to First Block Cache (pipelines.acceleration says so in the job's metrics and the log).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from vace.pipelines.acceleration.calibration import CALIBRATION_FILE, FORMAT_VERSION, calibration_path, save_calibration
from vace.pipelines.acceleration.step_cache import CachePolicy, StepCache
from vace.pipelines.engine.loading import load_pipeline
from vace.pipelines.engine.render import Renderer
from vace.pipelines.fixtures.tiny_model import resolve_model
from vace.pipelines.job.request import GenerationRequest, RequestError, parse_size
from vace.weights.loader import WeightsError


def calibrate(model: Any, steps: int = 50, width: int = 832, height: int = 480, num_frames: int = 81,
              guidance: float = 5.0, shift: float = 16.0, sampler: str = "unipc", seed: int = 0,
              prompt: str = "A calm lake at sunrise, mist over the water, birds flying, cinematic",
              work_dir: str | Path | None = None) -> dict[str, Any]:
    """Render one job with a calibrating step cache on the loaded model; return the calibration record."""
    request = GenerationRequest(prompt=prompt, width=width, height=height, num_frames=num_frames, steps=steps,
                                guidance=guidance, shift=shift, sampler=sampler, seed=seed)
    renderer = Renderer(model, work_dir=work_dir)
    cache = StepCache(model.transformers, CachePolicy("calibrate"), steps)
    started = time.perf_counter()
    try:
        renderer.render(request)
    finally:
        cache.remove()
    ratios = {ctx: [round(r, 6) for r in values] for ctx, values in cache.stats.ratios.items()}
    return {"version": FORMAT_VERSION, "method": "magcache", "model": model.name, "steps": steps,
            "width": width, "height": height, "num_frames": num_frames, "guidance": guidance, "shift": shift,
            "sampler": sampler, "seed": seed, "seconds": round(time.perf_counter() - started, 3), "ratios": ratios}


def register(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser("calibrate", help="compute MagCache ratios for a model and store them beside its weights")
    cal.add_argument("--model", required=True, help="tiny | tiny-a14b | path to a diffusers VACE directory")
    cal.add_argument("--device", default="auto")
    cal.add_argument("--offload", default="auto", help="none | model | group | sequential | auto")
    cal.add_argument("--steps", type=int, default=50)
    cal.add_argument("--size", default="832*480", help="WIDTH*HEIGHT")
    cal.add_argument("--frames", type=int, default=81)
    cal.add_argument("--guidance", type=float, default=5.0)
    cal.add_argument("--shift", type=float, default=16.0)
    cal.add_argument("--sampler", default="unipc")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--out", default=None, help=f"where to write (default: DIR/{CALIBRATION_FILE})")
    cal.set_defaults(handler=_calibrate_command)


def _calibrate_command(args: argparse.Namespace) -> int:
    try:
        width, height = parse_size(args.size)
        model = load_pipeline(resolve_model(args.model), device=args.device, offload=args.offload)
        # The request (steps, frames, sampler, ...) is validated by the render inside.
        record = calibrate(model, steps=args.steps, width=width, height=height, num_frames=args.frames,
                           guidance=args.guidance, shift=args.shift, sampler=args.sampler, seed=args.seed)
    except (RequestError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = Path(args.out) if args.out else calibration_path(model.path)
    try:
        save_calibration(record, target)
    except OSError as exc:
        print(f"error: cannot write {target}: {exc} (use --out)", file=sys.stderr)
        return 1
    print(json.dumps({"written": str(target), "steps": record["steps"], "seconds": record["seconds"],
                      "contexts": sorted(record["ratios"])}, indent=2))
    return 0
