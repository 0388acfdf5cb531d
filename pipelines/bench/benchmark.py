"""`vace bench`: time the real render path at a real model shape and write a JSON report.

`--model 14b|1.3b` builds the real classes (WanVACETransformer3DModel, UMT5 encoder, Wan VAE) from the
published configs with random weights: on a GPU allocated directly in serving precision (no checkpoint,
no CPU copy); on a CPU written once as a temporary checkpoint that the process, or every rank of a gloo
group, maps (pipelines.bench.random_checkpoint). `--model DIR` loads real weights; `--model tiny` runs
anywhere and tests the harness. The job is a text-to-video render through Renderer.render, so presets,
offload modes and the GPU levers are measured exactly as served. MFU counts only the transformer FLOPs
actually executed (pipelines.flops x evaluations done), so a step cache raises speed, not MFU. The report's
host_memory gives the peak physical memory of the process and its ranks (pipelines.bench.host_memory).
"""

from __future__ import annotations

import contextlib
import json
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vace.pipelines.acceleration.flops import counted_flops, latent_tokens, transformer_flops
from vace.pipelines.acceleration.levers import apply_gpu_levers
from vace.pipelines.acceleration.presets import DistillRecipe, get_preset, resolve_preset
from vace.pipelines.bench.host_memory import HostMemory
from vace.pipelines.bench.random_checkpoint import open_model, write_random_checkpoint
from vace.pipelines.bench.random_model import BenchError, RandomSpec, check_fits
from vace.pipelines.engine.group import GroupRenderer, GroupSpec, RenderGroup
from vace.pipelines.engine.loading import LoadedModel
from vace.pipelines.engine.loras import LoraConfig
from vace.pipelines.engine.memory import check_mode
from vace.pipelines.engine.render import Renderer
from vace.pipelines.fixtures.tiny_loras import write_lora
from vace.pipelines.fixtures.tiny_model import resolve_model
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.parallel.plan import plan_groups
from vace.weights.configs import TRANSFORMERS
from vace.weights.loader import resolve_device

# Dense bf16 tensor-core peak (vendor datasheets, SXM parts); MFU is null on devices not listed.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "H800": 989.4, "H20": 148.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.1, "B200": 2250.0}
BENCH_PROMPT = "A red fox trotting through fresh snow at dawn, soft light, cinematic, detailed fur"


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
    dtype: str | None = None  # random-weight shapes only: bfloat16 (default) or float32
    distill_lora: str | None = None  # preset turbo; None = a random rank-32 distill shaped for the model


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


def bench_loras(cfg: BenchConfig) -> LoraConfig:
    """Preset turbo's distill: --distill-lora, else a random rank-32 LoRA (ComfyUI keys, bf16) on every block of
    the benchmarked transformer, so `vace bench --preset turbo` measures the recipe without a download."""
    if not get_preset(cfg.preset).distill:
        return LoraConfig()
    if cfg.distill_lora:
        return LoraConfig(distill=DistillRecipe(cfg.distill_lora))
    config = transformer_config(cfg.model)
    path = Path(tempfile.mkdtemp(prefix="vace-bench-distill-")) / "random-distill.safetensors"
    write_lora(path, "comfy", seed=cfg.seed, dtype="bfloat16", dim=config["num_attention_heads"] *
               config["attention_head_dim"], ffn=config["ffn_dim"], blocks=config["num_layers"], rank=32)
    return LoraConfig(distill=DistillRecipe(str(path)))


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Build (or load) the model, render one job and return the report."""
    bench_request(cfg)
    check_mode(cfg.offload)
    device = resolve_device(cfg.device)
    random = random_spec(cfg, device)
    devices = group_devices(cfg, device) if cfg.sequence_parallel > 1 else (device,)
    # random weights are made in place on a GPU; elsewhere written once to a checkpoint every rank maps
    writes_checkpoint = random is not None and not device.startswith("cuda")
    if random:
        check_fits(random, device if cfg.offload == "none" else "cpu", writes_checkpoint)
    with contextlib.ExitStack() as stack:
        memory = stack.enter_context(HostMemory())
        ref, written_s = random.encode() if random else str(resolve_model(cfg.model)), 0.0
        if writes_checkpoint:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="vace-bench-random-"))
            started = time.perf_counter()
            ref = str(write_random_checkpoint(random, Path(folder) / "checkpoint"))
            written_s = time.perf_counter() - started
        started = time.perf_counter()
        if cfg.sequence_parallel > 1:
            report = _run_sharded(cfg, ref, devices, random, started)
        else:
            model = open_model(ref, device, cfg.offload)
            apply_gpu_levers(model, attention=cfg.attention, compile_blocks=cfg.compile_blocks, fp8=cfg.fp8)
            report = bench_loaded(cfg, model, time.perf_counter() - started, random)
    if written_s:
        report["stages"] = {"write_random_checkpoint": written_s, **report["stages"]}
        report["total_seconds"] += written_s
    report["host_memory"] = memory.report()
    return report


def random_spec(cfg: BenchConfig, device: str) -> RandomSpec | None:
    """What to build for a real shape (14b, 1.3b); None for a weights directory or a tiny model."""
    if cfg.model in TRANSFORMERS:
        return RandomSpec.default(cfg.model, device, cfg.dtype)
    if cfg.dtype:
        raise BenchError("--dtype applies to the random-weight shapes (14b, 1.3b); a loaded model keeps its "
                         "serving precision")
    return None


def bench_loaded(cfg: BenchConfig, model: LoadedModel, load_seconds: float,
                 random: RandomSpec | None = None) -> dict[str, Any]:
    """Render the benchmark job on an already built model (levers applied) and report."""
    info = {"name": model.name, "device": model.device, "dtype": str(model.pipeline.transformer.dtype),
            "offload": model.offload, "levers": model.levers, "config": dict(model.pipeline.transformer.config),
            "text_encoder": random.text_encoder_note() if random else "as loaded"}
    return _measure(cfg, Renderer(model, loras=bench_loras(cfg)), info, load_seconds)


def transformer_config(spec: str) -> dict[str, Any]:
    """The transformer config of a real shape or of a weights directory (read, not loaded)."""
    if spec in TRANSFORMERS:
        return dict(TRANSFORMERS[spec])
    return json.loads((resolve_model(spec) / "transformer" / "config.json").read_text())


def group_devices(cfg: BenchConfig, device: str) -> tuple[str, ...]:
    """The devices of a cfg.sequence_parallel-rank group, or BenchError saying why there is none."""
    import torch  # torch loads only where tensors are used (the API process never needs it)

    if cfg.offload != "none":
        raise BenchError("--offload applies to one-process runs; a sequence-parallel group keeps its shards resident")
    if not device.startswith("cuda"):
        return tuple(plan_groups(["cpu"], cfg.sequence_parallel)[0])
    if torch.cuda.device_count() < cfg.sequence_parallel:
        raise BenchError(f"--sequence-parallel {cfg.sequence_parallel} needs that many GPUs; "
                         f"{torch.cuda.device_count()} visible")
    return tuple(plan_groups([f"cuda:{i}" for i in range(cfg.sequence_parallel)], cfg.sequence_parallel)[0])


def _run_sharded(cfg: BenchConfig, ref: str, devices: tuple[str, ...], random: RandomSpec | None,
                 started: float) -> dict[str, Any]:
    """The same job through a pipelines.distributed render group over `devices`, each rank opening `ref` (on a
    CPU with a random shape: the written checkpoint, mapped by every rank)."""
    group = RenderGroup(GroupSpec(ref, devices, cfg.sp_mode, f"sharded-{cfg.model}",
                                  loader="vace.pipelines.bench.random_checkpoint:rank_model"))
    try:
        group.wait_ready()
        load_seconds = time.perf_counter() - started
        dtype = random.dtype if random else "bfloat16" if devices[0].startswith("cuda") else "float32"
        info = {"name": f"{cfg.model} x{len(devices)} ({cfg.sp_mode})", "device": devices[0], "dtype": dtype,
                "offload": "none", "text_encoder": random.text_encoder_note() if random else "as loaded",
                "levers": {"notes": ["GPU levers are not applied inside a sequence-parallel group"]},
                "config": transformer_config(cfg.model), "devices": list(devices)}
        return _measure(cfg, GroupRenderer(group, loras=bench_loras(cfg)), info, load_seconds)
    finally:
        group.stop()


def _measure(cfg: BenchConfig, renderer: Any, info: dict[str, Any], load_seconds: float) -> dict[str, Any]:
    """Render one job with `renderer` (Renderer or GroupRenderer) and build the report; `info` describes
    the model (name, device, dtype, offload, levers, transformer config; `devices` for a group)."""
    import diffusers  # diffusers loads only where a model is built
    import torch  # torch loads only where tensors are used (the API process never needs it)

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
    counted = counted_flops(config, cfg.width, cfg.height, num_frames)
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
        # the analytic count against torch's FLOP counter over the same forward on the meta device
        "flops_check": {"counted_on_meta": counted, "relative_difference": abs(counted - flops) / flops},
        "text_encoder": info["text_encoder"],
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
