"""`vace generate`: render one job without a server, with a progress bar."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vace.pipelines.acceleration.presets import DistillRecipe
from vace.pipelines.engine.loading import load_pipeline
from vace.pipelines.engine.loras import LoraConfig
from vace.pipelines.engine.render import Renderer
from vace.pipelines.fixtures.tiny_loras import TINY_DISTILL, resolve_tiny_loras
from vace.pipelines.fixtures.tiny_model import TINY_MODELS, resolve_model
from vace.pipelines.job.loras import LoraSpec
from vace.pipelines.job.request import (
    DEFAULT_NEGATIVE_PROMPT,
    INTERPOLATOR_NAMES,
    GenerationRequest,
    RequestError,
    parse_size,
)
from vace.pipelines.outputs.retime import retime
from vace.weights.catalog import HelperDirs
from vace.weights.loader import WeightsError


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that builds a GenerationRequest."""
    parser.add_argument("--prompt", default="")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--video", help="source / control video (path, URL or data: URI)")
    parser.add_argument("--mask", help="mask video or one mask image (white = generate)")
    parser.add_argument("--ref", action="append", default=[], help="reference image (repeatable)")
    parser.add_argument("--first-frame")
    parser.add_argument("--last-frame")
    parser.add_argument("--size", default="832*480", help="WIDTH*HEIGHT, multiples of 16")
    parser.add_argument("--frames", type=int, default=81, help="frame count (snapped to 4n+1)")
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--shift", type=float, default=16.0)
    parser.add_argument("--sampler", default="unipc", help="unipc | dpm++ | euler")
    parser.add_argument("--seed", type=int, default=-1, help="-1 = random (the seed used is printed)")
    parser.add_argument("--conditioning-scale", type=float, default=1.0)
    parser.add_argument("--preset", default="none", help="acceleration preset: none | low | regular | turbo (or a "
                        "prunaai speed_mode / fal acceleration); turbo runs the --distill-lora recipe")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH_OR_NAME[:SCALE]",
                        help="LoRA to apply (repeatable): a .safetensors path, a name in --lora-dir or a URL")
    parser.add_argument("--task", default=None, help="task name (default: inferred from the inputs); "
                        "see pipelines/tasks: t2v r2v firstframe lastframe firstlastframe extension firstclip "
                        "lastclip inpainting outpainting reframe control depth pose face flow gray scribble layout "
                        "move-anything swap-anything animate-anything expand-anything")
    add_task_flags(parser)
    frames = parser.add_argument_group("frame interpolation, temporal downsampling, prompt expansion")
    frames.add_argument("--interpolate", type=int, default=0, metavar="K",
                        help="insert K frames (0..5) between each pair: (N-1)(K+1)+1 frames at (K+1) x fps")
    frames.add_argument("--interpolator", default="film", choices=INTERPOLATOR_NAMES, help="frame interpolator")
    frames.add_argument("--temporal-downsample", type=int, default=0, metavar="D",
                        help="render every (D+1)-th frame (0..5) and interpolate the rest back")
    frames.add_argument("--auto-downsample", action="store_true",
                        help="pick D from the input fps and --auto-downsample-min-fps")
    frames.add_argument("--auto-downsample-min-fps", type=float, default=15.0)
    frames.add_argument("--expand-prompt", action="store_true", help="rewrite the prompt with the local LLM first")


def add_task_flags(parser: argparse.ArgumentParser) -> None:
    """Task settings; each lands in GenerationRequest.task_options only when given."""
    group = parser.add_argument_group("task options")
    group.add_argument("--preprocess", action=argparse.BooleanOptionalAction, default=None,
                       help="run the task's annotator on --video (default) or take it as a ready control video")
    group.add_argument("--annotator", help="flow: raft | farneback; scribble: lineart | canny")
    group.add_argument("--expand", action="append", choices=("left", "right", "top", "bottom"), default=[],
                       help="outpainting / expand-anything side (repeatable)")
    group.add_argument("--expand-ratio", type=float, help="added border per side, x source width/height")
    group.add_argument("--trim-borders", action=argparse.BooleanOptionalAction, default=None,
                       help="reframe: cut black bars first (default on)")
    group.add_argument("--zoom-factor", type=float, help="reframe: 0 = whole input visible .. 1 = fills the frame")
    group.add_argument("--clip-position", choices=("first", "last"), help="extension: clip before or after")
    group.add_argument("--clip-frames", type=int, help="extension: how many frames of the clip to keep")
    group.add_argument("--mask-tracking", choices=("none", "sam2"), help="track a mask image through the video")
    group.add_argument("--box", action="append", default=[], metavar="X1,Y1,X2,Y2",
                       help="layout / move-anything key box in output pixels (repeatable: start ... end)")
    group.add_argument("--match-input-frames", action="store_true", help="frame count from the input video")
    group.add_argument("--match-input-fps", action="store_true", help="fps from the input video")


def task_options_from_args(args: argparse.Namespace) -> dict:
    options: dict = {}
    for key in ("preprocess", "annotator", "expand_ratio", "trim_borders", "zoom_factor", "clip_position",
                "clip_frames", "mask_tracking"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    for side in getattr(args, "expand", None) or []:
        options[f"expand_{side}"] = True
    if getattr(args, "box", None):
        try:
            options["boxes"] = [[float(v) for v in box.split(",")] for box in args.box]
        except ValueError:
            raise RequestError("task_options.boxes", f"--box takes X1,Y1,X2,Y2 numbers, got {args.box!r}") from None
    if getattr(args, "match_input_frames", False):
        options["match_input_num_frames"] = True
    if getattr(args, "match_input_fps", False):
        options["match_input_frames_per_second"] = True
    return options


def request_from_args(args: argparse.Namespace):
    width, height = parse_size(args.size)
    return GenerationRequest(
        prompt=args.prompt,
        negative_prompt=DEFAULT_NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt,
        width=width, height=height, num_frames=args.frames, fps=args.fps, steps=args.steps,
        guidance=args.guidance, shift=args.shift, sampler=args.sampler, seed=args.seed,
        conditioning_scale=args.conditioning_scale, video=args.video, mask=args.mask,
        reference_images=list(args.ref), first_frame=args.first_frame, last_frame=args.last_frame,
        task=args.task, task_options=task_options_from_args(args), preset=args.preset,
        loras=[LoraSpec.parse(text).to_dict() for text in args.lora],
        interpolated_frames=args.interpolate, interpolator=args.interpolator,
        temporal_downsample=args.temporal_downsample, auto_downsample=args.auto_downsample,
        auto_downsample_min_fps=args.auto_downsample_min_fps, expand_prompt=args.expand_prompt,
    )


def lora_config_from_args(args: argparse.Namespace) -> LoraConfig:
    """--lora-dir and --distill-*; the tiny models get their tiny LoRA library and tiny distill by default."""
    tiny = args.model in TINY_MODELS
    lora_dir = args.lora_dir or (resolve_tiny_loras() if tiny else None)
    distill = args.distill_lora or (TINY_DISTILL if tiny else None)
    recipe = DistillRecipe(distill, args.distill_steps, args.distill_shift, args.distill_sampler) if distill else None
    return LoraConfig(library_dir=lora_dir, distill=recipe)


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="render one video without a server")
    gen.add_argument("--model", default="tiny", help="tiny | tiny-a14b | path to a diffusers VACE directory")
    gen.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    gen.add_argument("--offload", default="auto", help="memory mode: none | model | group | sequential | auto")
    gen.add_argument("--out", required=True, help="output .mp4 path")
    gen.add_argument("--lora-dir", default=None, metavar="DIR",
                     help="LoRA library that --lora names refer to (default for the tiny models: the tiny LoRAs)")
    gen.add_argument("--distill-lora", default=None, metavar="PATH_OR_NAME[:SCALE]",
                     help="step-distillation LoRA of --preset turbo (default for the tiny models: tiny-distill)")
    gen.add_argument("--distill-steps", type=int, default=DistillRecipe.steps)
    gen.add_argument("--distill-shift", type=float, default=DistillRecipe.shift)
    gen.add_argument("--distill-sampler", default=DistillRecipe.sampler, help="unipc | dpm++ | euler")
    gen.add_argument("--interpolators", type=Path, help="frame interpolator weights root (rife/, film/); default: "
                     "interpolators/ beside the model")
    gen.add_argument("--prompt-extender", type=Path, help="Qwen2.5-Instruct folder; default: prompt-extender/ "
                     "beside the model")
    gen.add_argument("--prompt-extender-vl", type=Path, help="Qwen2.5-VL-Instruct folder for requests with "
                     "images; default: prompt-extender-vl/ beside the model")
    add_generation_flags(gen)
    gen.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        request = request_from_args(args)
        model = load_pipeline(resolve_model(args.model), device=args.device, offload=args.offload)
        renderer = Renderer(model, loras=lora_config_from_args(args),
                            helpers=HelperDirs(args.interpolators, args.prompt_extender, args.prompt_extender_vl))
        prepared = renderer.prepare(request)
    except (RequestError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar = tqdm(total=prepared.request.steps, desc="denoising", unit="step", file=sys.stderr)

    def progress(step: int, total: int) -> None:
        bar.update(step - bar.n)

    result = renderer.render(prepared, on_progress=progress, output_path=args.out)
    bar.close()
    result = retime(result, prepared, on_log=lambda line: print(line, file=sys.stderr))
    plan = {k: result.metrics[k] for k in ("expanded_prompt", "temporal_downsample_factor", "rendered_frames",
                                           "interpolator") if k in result.metrics}
    print(json.dumps({"output": str(result.path), "seed": result.seed, "num_frames": result.num_frames,
                      "width": result.width, "height": result.height, "fps": result.fps, **plan,
                      "preset": result.metrics.get("preset"), "steps": result.metrics.get("steps"),
                      "loras": result.metrics.get("loras", []),
                      "transformer_evaluations": result.metrics.get("transformer_evaluations"),
                      "transformer_evaluations_skipped": result.metrics.get("transformer_evaluations_skipped"),
                      "timings": {k: round(v, 3) for k, v in result.timings.items()}}, indent=2))
    return 0
