"""`vace bench`: one render at a real model shape (pipelines.bench.benchmark), or `--suite gpu`, everything one
CUDA machine can tell in one go (pipelines.bench.gpu_suite; `--dry-run` prints its plan anywhere)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from vace.pipelines.bench import gpu_suite
from vace.pipelines.bench.benchmark import BenchConfig, BenchError, run_bench
from vace.pipelines.job.request import RequestError, parse_size
from vace.weights.loader import WeightsError

SUMMARY_KEYS = ("device", "dtype", "preset", "sequence_parallel", "seconds_per_step", "transformer_evaluations",
                "transformer_evaluations_skipped", "flops_per_forward", "flops_check", "achieved_tflops", "mfu",
                "peak_gpu_memory_gib", "peak_rss_gib", "host_memory")


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmark one render at a real model shape, or the whole GPU suite; "
                                         "writes a JSON report")
    bench.add_argument("--suite", choices=["gpu"], help="run the GPU suite (one CUDA machine, about 8 minutes)")
    bench.add_argument("--dry-run", action="store_true", help="with --suite: print the plan and exit (any machine)")
    bench.add_argument("--gpus", type=int, help="with --suite --dry-run: plan for this many GPUs (default: visible)")
    bench.add_argument("--budget-s", type=float, default=gpu_suite.BUDGET_S,
                       help="with --suite: skip cases whose estimate would pass this many seconds")
    bench.add_argument("--model", default="tiny", help="tiny | tiny-a14b | DIR | 14b | 1.3b (random weights)")
    bench.add_argument("--preset", default="none", help="none | low | regular | turbo (or a speed_mode string)")
    bench.add_argument("--distill-lora", default=None, metavar="PATH[:SCALE]",
                       help="preset turbo's distill LoRA (default: a random rank-32 one shaped for --model)")
    bench.add_argument("--size", default="832*480", help="WIDTH*HEIGHT")
    bench.add_argument("--frames", type=int, default=81)
    bench.add_argument("--steps", type=int, default=50)
    bench.add_argument("--guidance", type=float, default=5.0)
    bench.add_argument("--offload", default="none", help="none | model | group | sequential | auto")
    bench.add_argument("--sequence-parallel", type=int, default=1, metavar="N",
                       help="shard the job over N ranks (N GPUs; on CPU, N gloo processes)")
    bench.add_argument("--sp-mode", default="ulysses", choices=["ulysses", "ring"])
    bench.add_argument("--device", default="auto")
    bench.add_argument("--attention", default="auto", help="auto | sage | _flash_3 | flash | native")
    bench.add_argument("--no-compile", dest="compile_blocks", action="store_false")
    bench.add_argument("--fp8", action="store_true", help="FP8 transformer weights (Ada/Hopper, torchao)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--dtype", choices=["bfloat16", "float32"],
                       help="weights of the random 14b / 1.3b (default: bfloat16 on CUDA, float32 on CPU)")
    bench.add_argument("--out", help="report.json (required for a single run)")
    bench.set_defaults(handler=_bench_command)


def _bench_command(args: argparse.Namespace) -> int:
    if args.suite:
        return _suite_command(args)
    if not args.out:
        print("error: --out report.json is required", file=sys.stderr)
        return 2
    try:
        width, height = parse_size(args.size)
        cfg = BenchConfig(model=args.model, preset=args.preset, width=width, height=height, frames=args.frames,
                          steps=args.steps, guidance=args.guidance, offload=args.offload,
                          sequence_parallel=args.sequence_parallel, sp_mode=args.sp_mode,
                          device=args.device, attention=args.attention,
                          compile_blocks=args.compile_blocks, fp8=args.fp8, seed=args.seed,
                          dtype=args.dtype, distill_lora=args.distill_lora)
        report = run_bench(cfg)
    except (BenchError, RequestError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["config"] = asdict(cfg)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in SUMMARY_KEYS}, indent=2))
    return 0


def _suite_command(args: argparse.Namespace) -> int:
    import torch  # heavy; only to count the GPUs

    if args.dry_run:
        report = gpu_suite.plan_report(args.gpus or max(1, torch.cuda.device_count()), args.budget_s)
    else:
        device = "cuda" if args.device == "auto" else args.device
        try:
            report = gpu_suite.run_suite(device, args.budget_s)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    gpu_suite.print_table(report)
    gpu_suite.write_report(report, args.out)
    print(json.dumps(report))
    return 0
