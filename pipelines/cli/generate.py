"""`vace generate`: render one job without a server, with a progress bar."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from vace.pipelines.acceleration.presets import DISTILL_PAIR_NEEDED, DistillRecipe
from vace.pipelines.conditioning.annotators import AnnotatorEnv
from vace.pipelines.conditioning.tasks import preflight
from vace.pipelines.engine.device import check_device
from vace.pipelines.engine.loading import load_pipeline
from vace.pipelines.engine.loras import LoraConfig
from vace.pipelines.engine.memory import OFFLOAD_MODES
from vace.pipelines.engine.render import Prepared, Renderer, RenderResult, prepare_request
from vace.pipelines.engine.render_cap import capped_request, default_render_side, resize_result
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
from vace.weights.loader import WeightsError, check_layout, has_two_experts


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


class DistillFlagError(ValueError):
    """--distill-* flags that do not go together."""


def lora_config_from_args(args: argparse.Namespace, model: str | None = None) -> LoraConfig:
    """--lora-dir and --distill-* (add_lora_library_flags); the tiny models (`model`, default args.model) get their
    tiny LoRA library and tiny distill by default. DistillFlagError for a low-noise distill without its pair."""
    if args.distill_lora_low_noise and not args.distill_lora:
        raise DistillFlagError(DISTILL_PAIR_NEEDED)
    tiny = (model or args.model) in TINY_MODELS
    lora_dir = args.lora_dir or (resolve_tiny_loras() if tiny else None)
    distill = args.distill_lora or (TINY_DISTILL if tiny else None)
    recipe = DistillRecipe(distill, args.distill_steps, args.distill_shift, args.distill_sampler,
                           args.distill_lora_low_noise) if distill else None
    return LoraConfig(library_dir=lora_dir, distill=recipe)


# GenerationRequest field (or task option) -> the flag that sets it, so errors name what the user typed.
FLAG_OF = {
    "prompt": "--prompt", "negative_prompt": "--negative-prompt", "size": "--size", "width": "--size",
    "height": "--size", "num_frames": "--frames", "fps": "--fps", "steps": "--steps", "guidance": "--guidance",
    "shift": "--shift", "sampler": "--sampler", "seed": "--seed", "conditioning_scale": "--conditioning-scale",
    "video": "--video", "mask": "--mask", "reference_images": "--ref", "first_frame": "--first-frame",
    "last_frame": "--last-frame", "task": "--task", "task_options": "--task", "preset": "--preset", "loras": "--lora",
}
TASK_FLAG_OF = {
    "preprocess": "--preprocess", "annotator": "--annotator", "expand_left": "--expand", "expand_right": "--expand",
    "expand_top": "--expand", "expand_bottom": "--expand", "expand_ratio": "--expand-ratio",
    "trim_borders": "--trim-borders", "zoom_factor": "--zoom-factor", "clip_position": "--clip-position",
    "clip_frames": "--clip-frames", "mask_tracking": "--mask-tracking", "boxes": "--box",
    "match_input_num_frames": "--match-input-frames", "match_input_frames_per_second": "--match-input-fps",
}


def flag_error(field: str, message: str) -> str:
    """'num_frames', 'must be ...' -> '--frames: must be ...' (width/height keep their name after --size)."""
    base, _, rest = field.partition("[")
    index = rest.partition("]")[0]
    option = base.removeprefix("task_options.")
    flag = TASK_FLAG_OF.get(option) if base.startswith("task_options.") else FLAG_OF.get(base)
    if flag is None:
        return f"{field}: {message}"
    where = f" #{int(index) + 1}" if index.isdigit() else ""
    detail = f"{base} {message}" if base in ("width", "height") else message
    return f"{flag}{where}: {detail}"


def add_lora_library_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--lora-dir and --distill-* of a command that renders in its own process (`prefix` starts each help)."""
    parser.add_argument("--lora-dir", default=None, metavar="DIR", help=f"{prefix}LoRA library that LoRA names "
                        "refer to (default for the tiny models: the tiny LoRAs)")
    parser.add_argument("--distill-lora", default=None, metavar="PATH_OR_NAME[:SCALE]",
                        help=f"{prefix}step-distillation LoRA of preset turbo (default for the tiny models: "
                             "tiny-distill)")
    parser.add_argument("--distill-lora-low-noise", default=None, metavar="PATH_OR_NAME[:SCALE]",
                        help=f"{prefix}two-expert models: the distill LoRA of the low-noise expert (--distill-lora "
                             "then goes on the high-noise expert only)")
    parser.add_argument("--distill-steps", type=int, default=DistillRecipe.steps, help=f"{prefix}distill steps")
    parser.add_argument("--distill-shift", type=float, default=DistillRecipe.shift, help=f"{prefix}distill shift")
    parser.add_argument("--distill-sampler", default=DistillRecipe.sampler, help=f"{prefix}unipc | dpm++ | euler")


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="render one video without a server")
    gen.add_argument("--model", default="tiny", help="tiny | tiny-a14b | path to a diffusers VACE directory")
    gen.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    gen.add_argument("--offload", default="auto", choices=OFFLOAD_MODES, help="memory mode")
    gen.add_argument("--max-render-side", type=int, default=None,
                     help="render at most N px on the longer side, then resize to --size (default 256 for the "
                          "tiny models, which make noise, else none; 0 = no cap)")
    gen.add_argument("--out", required=True, help="output .mp4 path")
    add_lora_library_flags(gen)
    gen.add_argument("--interpolators", type=Path, help="frame interpolator weights root (rife/, film/); default: "
                     "interpolators/ beside the model")
    gen.add_argument("--prompt-extender", type=Path, help="Qwen2.5-Instruct folder; default: prompt-extender/ "
                     "beside the model")
    gen.add_argument("--prompt-extender-vl", type=Path, help="Qwen2.5-VL-Instruct folder for requests with "
                     "images; default: prompt-extender-vl/ beside the model")
    add_generation_flags(gen)
    gen.set_defaults(handler=_generate)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _generate(args: argparse.Namespace) -> int:
    """Every flag is checked and the inputs are decoded before the model loads; errors name the flag."""
    try:
        device = check_device(args.device)
    except ValueError as exc:
        return _fail(f"--device: {exc}")
    if args.max_render_side is not None and args.max_render_side < 0:
        return _fail(f"--max-render-side: must be 0 (no cap) or a number of pixels, got {args.max_render_side}")
    try:
        loras = lora_config_from_args(args)
    except DistillFlagError as exc:
        return _fail(str(exc))
    work = tempfile.mkdtemp(prefix="vace-generate-")
    try:
        request = request_from_args(args).validated()
        model_dir = resolve_model(args.model)
        two_experts = has_two_experts(check_layout(model_dir))
        env_device = None if device == "auto" else device
        preflight(request, AnnotatorEnv.for_model(model_dir, env_device))
        max_side = default_render_side(args.model in TINY_MODELS, args.max_render_side)
        helpers = HelperDirs(args.interpolators, args.prompt_extender, args.prompt_extender_vl)
        prepared = prepare_request(capped_request(request, max_side), Path(work), None, model_dir, env_device,
                                   two_experts, loras, helpers)
    except RequestError as exc:
        return _fail(flag_error(exc.field, exc.message))
    except WeightsError as exc:
        return _fail(f"--model: {exc}")
    rendered = (prepared.request.width, prepared.request.height)
    if rendered != (request.width, request.height):
        print(f"rendering at {rendered[0]}x{rendered[1]} (--max-render-side {max_side}), resized to "
              f"{request.width}x{request.height}", file=sys.stderr)
    print(f"loading {args.model} from {model_dir} (device {args.device}, offload {args.offload}) ...",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        result = _render(args, model_dir, device, prepared, work, {"loras": loras, "helpers": helpers})
    except WeightsError as exc:
        return _fail(f"--model: {exc}")
    result = retime(result, prepared, on_log=lambda line: print(line, file=sys.stderr))
    result = resize_result(result, request.width, request.height)
    plan = {k: result.metrics[k] for k in ("expanded_prompt", "temporal_downsample_factor", "rendered_frames",
                                           "interpolator") if k in result.metrics}
    report = {"output": str(result.path), "seed": result.seed, "num_frames": result.num_frames,
              "width": result.width, "height": result.height, "fps": result.fps, **plan,
              "preset": result.metrics.get("preset"), "steps": result.metrics.get("steps"),
              "loras": result.metrics.get("loras", []),
              "transformer_evaluations": result.metrics.get("transformer_evaluations"),
              "transformer_evaluations_skipped": result.metrics.get("transformer_evaluations_skipped"),
              "timings": {k: round(v, 3) for k, v in result.timings.items()},
              "total_seconds": round(time.perf_counter() - started, 3)}
    if rendered != (request.width, request.height):
        report["rendered_at"] = list(rendered)
    print(json.dumps(report, indent=2))
    return 0


def _render(args: argparse.Namespace, model_dir: Path, device: str, prepared: Prepared, work: str,
            options: dict) -> RenderResult:
    """Load the model (saying how long it took) and render the prepared job with a progress bar."""
    started = time.perf_counter()
    model = load_pipeline(model_dir, device=device, offload=args.offload)
    print(f"loaded in {time.perf_counter() - started:.1f}s on {model.device} (offload {model.offload})",
          file=sys.stderr, flush=True)
    bar = tqdm(total=prepared.request.steps, desc="denoising", unit="step", file=sys.stderr)

    def progress(step: int, total: int) -> None:
        bar.update(step - bar.n)

    result = Renderer(model, work_dir=work, **options).render(prepared, on_progress=progress, output_path=args.out)
    bar.close()
    return result
