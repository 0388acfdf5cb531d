"""`vace bench`: time the real render path at a real model shape and write a JSON report.

`--model 14b|1.3b` builds the real classes (WanVACETransformer3DModel, UMT5 encoder, Wan VAE) from the
published configs with random weights, allocated directly on the GPU in serving precision (no
checkpoint, no CPU copy); `--model DIR` loads real weights; `--model tiny` runs anywhere and tests the
harness. The job is a text-to-video render through Renderer.render, so presets, offload modes and the
GPU levers are measured exactly as served. MFU counts only the transformer FLOPs actually executed
(pipelines.flops x evaluations done), so a step cache raises speed, not MFU.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vace.pipelines.acceleration.flops import latent_tokens, transformer_flops
from vace.pipelines.acceleration.levers import apply_gpu_levers
from vace.pipelines.acceleration.presets import resolve_preset
from vace.pipelines.engine.group import GroupRenderer, GroupSpec, RenderGroup, plan_groups
from vace.pipelines.engine.loading import LoadedModel, load_pipeline
from vace.pipelines.engine.memory import apply_memory_mode, check_mode, module_bytes, resolve_offload
from vace.pipelines.engine.render import Renderer
from vace.pipelines.fixtures.tiny_model import resolve_model
from vace.pipelines.job.request import GenerationRequest, RequestError, parse_size
from vace.weights.loader import WeightsError, resolve_device

REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "14b": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
                vace_layers=[0, 5, 10, 15, 20, 25, 30, 35], vace_in_channels=96),
    "1.3b": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
                 vace_layers=list(range(0, 30, 2)), vace_in_channels=96),
}
# google/umt5-xxl encoder, as shipped in text_encoder/ of the Wan checkpoints.
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# Dense bf16 tensor-core peak (vendor datasheets, SXM parts); MFU is null on devices not listed.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "H800": 989.4, "H20": 148.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.1, "B200": 2250.0}
BENCH_PROMPT = "A red fox trotting through fresh snow at dawn, soft light, cinematic, detailed fur"


class BenchError(RuntimeError):
    """The benchmark cannot run as asked."""


@dataclass
class BenchConfig:
    model: str = "tiny"
    preset: str = "none"
    width: int = 832
    height: int = 480
    frames: int = 81
    steps: int = 50
    guidance: float = 5.0
    offload: str = "none"
    sequence_parallel: int = 1
    sp_mode: str = "ulysses"
    device: str = "auto"
    attention: str = "auto"
    compile_blocks: bool = True
    fp8: bool = False
    seed: int = 0


def random_components(shape: str, device: str, dtype: Any = None, text_encoder: bool = True) -> dict[str, Any]:
    """The real component classes at the `shape` config with random weights, built in place on `device`:
    transformer and text encoder (None unless `text_encoder`) in `dtype` (default bf16 on CUDA, fp32
    elsewhere), VAE in fp32."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACETransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    if shape not in REAL_CONFIGS:
        raise BenchError(f"unknown model shape {shape!r}; known: {', '.join(REAL_CONFIGS)}")
    big = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(big)
        with torch.device(device):
            transformer = WanVACETransformer3DModel(**REAL_CONFIGS[shape]).eval()
            encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).eval() if text_encoder else None
        torch.set_default_dtype(torch.float32)
        with torch.device(device):
            vae = AutoencoderKLWan().eval()  # the default config is the Wan2.1 VAE
    finally:
        torch.set_default_dtype(previous)
    return {
        "transformer": transformer, "text_encoder": encoder, "vae": vae,
        "tokenizer": AutoTokenizer.from_pretrained(str(resolve_model("tiny") / "tokenizer")),
        "scheduler": UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                             num_train_timesteps=1000, flow_shift=3.0),
    }


def build_model(spec: str, device: str, offload: str, text_encoder: bool = True) -> Any:
    """A LoadedModel: random weights at a real shape (14b, 1.3b) or loaded (tiny, tiny-a14b, a directory);
    without a text encoder unless `text_encoder`."""
    device = resolve_device(device)
    if spec not in REAL_CONFIGS:
        return load_pipeline(resolve_model(spec), device=device, offload=offload, text_encoder=text_encoder)
    if not device.startswith("cuda"):
        raise BenchError(f"--model {spec} builds {spec.upper()} weights at full size and needs a CUDA device; "
                         "on CPU benchmark --model tiny")
    import torch
    from diffusers import WanVACEPipeline

    # Offloaded modes (and `auto`, which decides from the sizes) start from the CPU; `none` allocates on the GPU.
    components = random_components(spec, device if offload == "none" else "cpu", dtype=torch.bfloat16,
                                   text_encoder=text_encoder)
    mode = resolve_offload(offload, device, module_bytes(components))
    pipe = WanVACEPipeline(boundary_ratio=None, **components)
    pipe.set_progress_bar_config(disable=True)
    apply_memory_mode(pipe, mode, device)
    return LoadedModel(name=f"random-{spec}", path=Path(f"<random {spec}>"), pipeline=pipe, device=device,
                       two_experts=False, offload=mode)


def _peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def bench_request(cfg: BenchConfig) -> Any:
    """The benchmark's text-to-video job, validated (RequestError before any model is built)."""
    return resolve_preset(GenerationRequest(prompt=BENCH_PROMPT, width=cfg.width, height=cfg.height,
                                            num_frames=cfg.frames, steps=cfg.steps, guidance=cfg.guidance,
                                            seed=cfg.seed, preset=cfg.preset).validated())


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Build (or load) the model, render one job and return the report."""
    bench_request(cfg)
    check_mode(cfg.offload)
    if cfg.sequence_parallel > 1:
        return _run_sharded(cfg)
    started = time.perf_counter()
    model = build_model(cfg.model, cfg.device, cfg.offload)

    apply_gpu_levers(model, attention=cfg.attention, compile_blocks=cfg.compile_blocks, fp8=cfg.fp8)
    load_seconds = time.perf_counter() - started
    info = {"name": model.name, "device": model.device, "dtype": str(model.pipeline.transformer.dtype),
            "offload": model.offload, "levers": model.levers, "config": dict(model.pipeline.transformer.config)}
    return _measure(cfg, Renderer(model), info, load_seconds)


def rank_model(spec: str, device: str, text_encoder: bool = True) -> Any:
    """GroupSpec.loader for sharded benches: each rank builds the model run_bench would (ranks > 0 without
    a text encoder)."""
    return build_model(spec, device, "none", text_encoder)


def transformer_config(spec: str) -> dict[str, Any]:
    """The transformer config of a real shape or of a weights directory (read, not loaded)."""
    if spec in REAL_CONFIGS:
        return dict(REAL_CONFIGS[spec])

    return json.loads((resolve_model(spec) / "transformer" / "config.json").read_text())


def _run_sharded(cfg: BenchConfig) -> dict[str, Any]:
    """The same job through a pipelines.distributed render group of cfg.sequence_parallel ranks."""
    import torch

    device = resolve_device(cfg.device)
    if device.startswith("cuda"):
        if torch.cuda.device_count() < cfg.sequence_parallel:
            raise BenchError(f"--sequence-parallel {cfg.sequence_parallel} needs that many GPUs; "
                             f"{torch.cuda.device_count()} visible")
        devices = plan_groups([f"cuda:{i}" for i in range(cfg.sequence_parallel)], cfg.sequence_parallel)[0]
    else:
        devices = plan_groups(["cpu"], cfg.sequence_parallel)[0]
    if cfg.offload != "none":
        raise BenchError("--offload applies to one-process runs; a sequence-parallel group keeps its shards resident")
    started = time.perf_counter()
    group = RenderGroup(GroupSpec(cfg.model, devices, cfg.sp_mode, f"sharded-{cfg.model}",
                                  loader="vace.pipelines.bench.benchmark:rank_model"))
    try:
        group.wait_ready()
        load_seconds = time.perf_counter() - started
        info = {"name": f"{cfg.model} x{len(devices)} ({cfg.sp_mode})", "device": devices[0],
                "dtype": "bfloat16" if devices[0].startswith("cuda") else "float32", "offload": "none",
                "levers": {"notes": ["GPU levers are not applied inside a sequence-parallel group"]},
                "config": transformer_config(cfg.model), "devices": list(devices)}
        return _measure(cfg, GroupRenderer(group), info, load_seconds)
    finally:
        group.stop()


def _measure(cfg: BenchConfig, renderer: Any, info: dict[str, Any], load_seconds: float) -> dict[str, Any]:
    """Render one job with `renderer` (Renderer or GroupRenderer) and build the report; `info` describes
    the model (name, device, dtype, offload, levers, transformer config; `devices` for a group)."""
    import diffusers
    import torch

    cuda = info["device"].startswith("cuda")
    ranks = len(info.get("devices", [info["device"]]))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    prepared = renderer.prepare(bench_request(cfg))
    marks: list[float] = []

    def on_progress(step: int, total: int) -> None:
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    result = renderer.render(prepared, on_progress=on_progress)
    denoise = result.timings["denoise"]
    steps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    first_step = denoise - sum(steps)
    warm = steps or [denoise]
    config = info["config"]
    num_frames = prepared.conditioning.num_frames
    flops = transformer_flops(config, cfg.width, cfg.height, num_frames)
    done = result.metrics["transformer_evaluations"]
    skipped = result.metrics["transformer_evaluations_skipped"]
    achieved = flops * done / denoise / 1e12
    device_name = torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})"
    peak = _peak_tflops(device_name) * ranks if cuda and _peak_tflops(device_name) else None
    return {
        "model": cfg.model, "model_name": info["name"], "device": device_name,
        "devices": info.get("devices", [info["device"]]),
        "dtype": info["dtype"].replace("torch.", ""),
        "preset": result.metrics["preset"], "step_cache": result.metrics["step_cache"],
        "step_cache_note": result.metrics.get("step_cache_note"),
        "offload": info["offload"], "sequence_parallel": cfg.sequence_parallel,
        "sp_mode": cfg.sp_mode if cfg.sequence_parallel > 1 else None,
        "width": cfg.width, "height": cfg.height, "frames": num_frames, "steps": cfg.steps,
        "guidance": cfg.guidance, "cfg": cfg.guidance > 1.0,
        "transformer": {"width": config["num_attention_heads"] * config["attention_head_dim"],
                        "blocks": config["num_layers"], "vace_blocks": len(config["vace_layers"]),
                        "ffn_dim": config["ffn_dim"]},
        "latent_tokens": latent_tokens(config, cfg.width, cfg.height, num_frames),
        "flops_per_forward": flops,
        "transformer_evaluations": done,
        "transformer_evaluations_skipped": skipped,
        "seconds_per_step": statistics.median(warm),
        "seconds_per_step_mean": denoise / cfg.steps,
        "setup_and_first_step_seconds": first_step,
        "stages": {"load_model": load_seconds, **result.timings},
        "total_seconds": load_seconds + sum(result.timings.values()),
        # A group's ranks are other processes: their GPU memory is not visible from here.
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda and ranks == 1 else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "achieved_tflops": achieved,
        "effective_tflops": flops * (done + skipped) / denoise / 1e12,
        "peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "gpu_levers": info["levers"],
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmark one render at a real model shape; writes a JSON report")
    bench.add_argument("--model", default="tiny", help="tiny | tiny-a14b | DIR | 14b | 1.3b (random weights)")
    bench.add_argument("--preset", default="none", help="none | low | regular (or a speed_mode string)")
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
    bench.add_argument("--out", required=True, help="report.json")
    bench.set_defaults(handler=_bench_command)


def _bench_command(args: argparse.Namespace) -> int:
    try:
        width, height = parse_size(args.size)
        cfg = BenchConfig(model=args.model, preset=args.preset, width=width, height=height, frames=args.frames,
                          steps=args.steps, guidance=args.guidance, offload=args.offload,
                          sequence_parallel=args.sequence_parallel, sp_mode=args.sp_mode,
                          device=args.device, attention=args.attention,
                          compile_blocks=args.compile_blocks, fp8=args.fp8, seed=args.seed)
        report = run_bench(cfg)
    except (BenchError, RequestError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["config"] = asdict(cfg)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("device", "preset", "seconds_per_step", "transformer_evaluations",
                                             "transformer_evaluations_skipped", "achieved_tflops", "mfu",
                                             "peak_gpu_memory_gib")}, indent=2))
    return 0
