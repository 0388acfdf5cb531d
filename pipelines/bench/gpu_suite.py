"""`vace bench --suite gpu`: everything worth knowing about one CUDA machine, measured in one process start.

The cases, in order (each a full Renderer.render of the benchmark's text-to-video job at 832x480x81 with CFG
unless said otherwise, so the numbers are what a served job gets):
1. correctness: the tiny model on the GPU (bf16, as served) against the CPU (fp32): one transformer forward
   within a relative L2 error of FORWARD_TOLERANCE, a 4-step render within FRAMES_TOLERANCE mean absolute
   difference of the decoded frames;
2. nan: one 14B bf16 transformer forward at full size on random inputs has no NaN / inf;
3. presets none / low / regular, eager (no compilation), PRESET_STEPS steps: past the 20% warm-up, so the step
   cache reaches its cached phase; preset turbo: a random rank-32 distill LoRA, its 4 steps without CFG;
4. compiled: preset none with regional compilation (the first step pays the compilation; s/step is the median
   of the warm steps);
5. fp8: preset none, compiled, FP8 block weights (skipped with the reason where unsupported);
6. offload model / group / sequential: one step each, for the peak GPU memory of each mode;
7. with several GPUs: sequence-parallel scaling over 2, 4, 8 ranks (1 is case 3's none).
Each case records s/step, transformer evaluations (done / skipped), achieved TFLOP/s and MFU against the FLOP
count, and peak GPU memory. A case whose estimate would pass the time budget is skipped, saying so.

Estimates (the dry-run plan) come from the FLOP count at SUSTAINED_TFLOPS -- derived from the published
diffusers anchor (Wan2.1-14B 480p, 9.77 s per CFG step on an H100 = 2 x 2.0 PFLOP / 9.77 s ~ 415 TFLOP/s) --
plus the fixed costs below, which are assumptions until a real run replaces them.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vace.pipelines.acceleration.flops import transformer_flops
from vace.pipelines.acceleration.levers import apply_gpu_levers, probe_capabilities
from vace.pipelines.bench.benchmark import BenchConfig, BenchError, bench_loaded, run_bench
from vace.pipelines.bench.random_model import RandomSpec, build_model
from vace.pipelines.engine.loading import load_pipeline
from vace.pipelines.engine.render import Renderer
from vace.pipelines.fixtures.tiny_model import resolve_model
from vace.pipelines.job.request import GenerationRequest
from vace.weights.configs import TRANSFORMERS

WIDTH, HEIGHT, FRAMES = 832, 480, 81
PRESET_STEPS = 5  # warm-up max(1, round(0.2 * 5)) = 1 step, then 4 steps where the cache may skip
LEVER_STEPS = 2  # the first pays the compilation; s/step is the second
SP_STEPS = 3
TURBO_STEPS = 4  # the distill recipe's own steps
BUDGET_S = 480.0  # 8 minutes on an H100/H200
FORWARD_TOLERANCE = 3e-2  # relative L2, bf16 GPU vs fp32 CPU, tiny model
FRAMES_TOLERANCE = 3e-2  # mean absolute difference of [0, 1] frames after a 4-step render

SUSTAINED_TFLOPS = 415.0
FP8_SPEEDUP = 1.5
BUILD_S = 20.0  # random 14B + UMT5-XXL weights initialised on the GPU
OFFLOAD_BUILD_S = 30.0  # the same, then moved to host memory
VAE_S = 20.0  # VACE conditioning encode (inactive + reactive) and decode of 81 frames at 480p, fp32
COMPILE_S = 90.0
PCIE_GBPS = 20.0  # host -> GPU for the streaming offload modes
CORRECTNESS_S = 20.0
BF16_14B_GIB = 34.7  # transformer bytes, for the offload modes' transfer estimate


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # correctness | nan | render | sequence_parallel
    preset: str = "none"
    steps: int = 0
    compile_blocks: bool = False
    fp8: bool = False
    offload: str = "none"
    ranks: int = 1
    fresh_build: bool = False  # builds its own model (else reuses the resident bf16 14B)

    def forwards(self) -> int:
        """Transformer forwards at most (CFG: two a step; a step cache only lowers it)."""
        per_step = 1 if self.preset == "turbo" else 2  # turbo runs guidance 1: no CFG pass
        return {"nan": 1, "render": per_step * self.steps, "sequence_parallel": 2 * self.steps}.get(self.kind, 0)


def plan(gpus: int) -> list[Case]:
    cases = [Case("correctness: tiny GPU vs CPU", "correctness"),
             Case("nan: 14B bf16 forward", "nan", fresh_build=True)]
    cases += [Case(f"preset {p}", "render", preset=p, steps=PRESET_STEPS) for p in ("none", "low", "regular")]
    # its own model: the distill's PEFT layers stay (disabled) in a model once loaded, later cases must not see them
    cases += [Case("turbo: random rank-32 distill", "render", preset="turbo", steps=TURBO_STEPS,
                   fresh_build=True)]
    cases += [Case("compiled", "render", steps=LEVER_STEPS, compile_blocks=True),
              Case("fp8 compiled", "render", steps=LEVER_STEPS, compile_blocks=True, fp8=True, fresh_build=True)]
    cases += [Case(f"offload {m}", "render", steps=1, offload=m, fresh_build=True)
              for m in ("model", "group", "sequential")]
    cases += [Case(f"sequence parallel x{n}", "sequence_parallel", steps=SP_STEPS, ranks=n, fresh_build=True)
              for n in (2, 4, 8) if n <= gpus]
    return cases


def estimate_seconds(case: Case, flops_per_forward: float) -> float:
    """The case's expected wall time: its transformer FLOPs at SUSTAINED_TFLOPS plus its fixed costs."""
    if case.kind == "correctness":
        return CORRECTNESS_S
    rate = SUSTAINED_TFLOPS * 1e12 * (FP8_SPEEDUP if case.fp8 else 1.0) * case.ranks
    seconds = case.forwards() * flops_per_forward / rate
    if case.kind != "nan":
        seconds += VAE_S
    if case.fresh_build:
        seconds += OFFLOAD_BUILD_S if case.offload != "none" else BUILD_S
    if case.compile_blocks:
        seconds += COMPILE_S
    if case.offload in ("group", "sequential"):
        seconds += case.forwards() * BF16_14B_GIB * 2**30 / (PCIE_GBPS * 1e9)
    return seconds


def plan_report(gpus: int, budget_s: float = BUDGET_S) -> dict[str, Any]:
    """The dry-run: every case with its steps, forwards and estimated duration."""
    flops = transformer_flops(TRANSFORMERS["14b"], WIDTH, HEIGHT, FRAMES)
    rows, total = [], 0.0
    for case in plan(gpus):  # skipped as run_suite would skip it if every estimate came true
        estimate = estimate_seconds(case, flops)
        fits = case.kind == "correctness" or total + estimate <= budget_s
        total += estimate if fits else 0.0
        rows.append({"case": case.name, **asdict(case), "forwards": case.forwards(),
                     "estimated_seconds": round(estimate, 1),
                     "skipped": None if fits else f"would pass the {budget_s:.0f} s budget at this estimate"})
    return {"suite": "gpu", "gpus": gpus, "size": f"{WIDTH}*{HEIGHT}", "frames": FRAMES,
            "flops_per_forward": flops, "budget_seconds": budget_s, "cases": rows,
            "estimated_total_seconds": round(total, 1),
            "assumptions": {"sustained_tflops": SUSTAINED_TFLOPS, "fp8_speedup": FP8_SPEEDUP, "build_s": BUILD_S,
                            "offload_build_s": OFFLOAD_BUILD_S, "vae_s": VAE_S, "compile_s": COMPILE_S,
                            "pcie_gbps": PCIE_GBPS},
            "tolerances": {"forward_relative_l2": FORWARD_TOLERANCE, "frames_mean_abs": FRAMES_TOLERANCE}}


def _config(case: Case, device: str) -> BenchConfig:
    return BenchConfig(model="14b", preset=case.preset, width=WIDTH, height=HEIGHT, frames=FRAMES, steps=case.steps,
                       offload=case.offload, sequence_parallel=case.ranks, device=device,
                       compile_blocks=case.compile_blocks, fp8=case.fp8)


def _return_gpu_memory() -> None:
    """After the caller dropped its last reference to a model: collect it and hand its blocks back to CUDA."""
    import torch  # torch loads only where tensors are used (the API process never needs it)

    gc.collect()
    torch.cuda.empty_cache()


def correctness(device: str) -> dict[str, Any]:
    """The tiny model's forward and a short render on `device` (the GPU, as served) against CPU fp32."""
    import torch  # torch loads only where tensors are used (the API process never needs it)

    tiny = resolve_model("tiny")
    models = {d: load_pipeline(tiny, device=d) for d in ("cpu", device)}
    transformer = models["cpu"].pipeline.transformer
    config = transformer.config
    generator = torch.Generator().manual_seed(0)
    latent = (1, config.in_channels, 5, 8, 8)
    inputs = dict(hidden_states=torch.randn(*latent, generator=generator),
                  control_hidden_states=torch.randn(1, config.vace_in_channels, *latent[2:], generator=generator),
                  encoder_hidden_states=torch.randn(1, 16, config.text_dim, generator=generator),
                  timestep=torch.tensor([500.0]))
    outputs = {}
    with torch.inference_mode():
        for d, model in models.items():
            t = model.pipeline.transformer
            outputs[d] = t(**{k: v.to(d, t.dtype if v.is_floating_point() and k != "timestep" else v.dtype)
                              for k, v in inputs.items()}, return_dict=False)[0].float().cpu()
    error = float((outputs[device] - outputs["cpu"]).norm() / outputs["cpu"].norm())
    request = GenerationRequest(prompt="a red fox in the snow", width=64, height=64, num_frames=17, steps=4, seed=0)
    frames = {d: Renderer(m).render(request).frames for d, m in models.items()}
    frames_diff = float(abs(frames[device] - frames["cpu"]).mean())
    del models, transformer
    if device.startswith("cuda"):
        _return_gpu_memory()
    return {"forward_relative_l2": error, "forward_ok": error <= FORWARD_TOLERANCE,
            "frames_mean_abs_difference": frames_diff, "frames_ok": frames_diff <= FRAMES_TOLERANCE,
            "ok": error <= FORWARD_TOLERANCE and frames_diff <= FRAMES_TOLERANCE}


def nan_check(model: Any, width: int = WIDTH, height: int = HEIGHT, frames: int = FRAMES) -> dict[str, Any]:
    """One transformer forward (the 14B in bf16 at full size, in the suite) on random inputs: finite everywhere?"""
    import torch  # torch loads only where tensors are used (the API process never needs it)

    transformer, device = model.pipeline.transformer, model.device
    config, dtype = transformer.config, transformer.dtype
    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        started = time.perf_counter()
        out = transformer(
            hidden_states=torch.randn(1, config.in_channels, *latent, generator=generator, device=device,
                                      dtype=dtype),
            control_hidden_states=torch.randn(1, config.vace_in_channels, *latent, generator=generator,
                                              device=device, dtype=dtype),
            encoder_hidden_states=torch.randn(1, 512, config.text_dim, generator=generator, device=device,
                                              dtype=dtype),
            timestep=torch.tensor([500.0], device=device), return_dict=False)[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        finite = bool(torch.isfinite(out).all())
    return {"finite": finite, "ok": finite, "seconds": seconds, "output_shape": list(out.shape),
            "output_abs_max": float(out.abs().max()) if finite else None}


def _row(case: Case, result: dict[str, Any]) -> dict[str, Any]:
    keep = ("seconds_per_step", "transformer_evaluations", "transformer_evaluations_skipped", "achieved_tflops",
            "mfu", "peak_gpu_memory_gib", "step_cache", "gpu_levers", "stages", "device", "flops_check")
    return {"case": case.name, **asdict(case), **{k: result[k] for k in keep if k in result}}


def run_suite(device: str = "cuda", budget_s: float = BUDGET_S) -> dict[str, Any]:
    """Run every planned case that fits the budget on this CUDA machine; one report."""
    import torch  # torch loads only where tensors are used (the API process never needs it)

    if not torch.cuda.is_available():
        raise BenchError("--suite gpu needs a CUDA GPU and none is visible here (--dry-run prints the plan)")
    started = time.perf_counter()
    gpus = torch.cuda.device_count()
    flops = transformer_flops(TRANSFORMERS["14b"], WIDTH, HEIGHT, FRAMES)
    caps = probe_capabilities(device)
    rows: list[dict[str, Any]] = []
    resident = _Resident(device)
    for case in plan(gpus):
        estimate = estimate_seconds(case, flops)
        elapsed = time.perf_counter() - started
        if case.kind != "correctness" and elapsed + estimate > budget_s:
            rows.append({"case": case.name, **asdict(case), "skipped": f"estimated {estimate:.0f} s after "
                         f"{elapsed:.0f} s would pass the {budget_s:.0f} s budget"})
            continue
        if case.fp8 and (caps.capability is None or caps.capability < (8, 9) or "torchao" not in caps.packages):
            rows.append({"case": case.name, **asdict(case),
                         "skipped": "fp8 needs compute capability 8.9+ and torchao"})
            continue
        case_started = time.perf_counter()
        try:
            rows.append(_run_case(case, device, resident))
        except Exception as exc:  # noqa: BLE001 - one failed case is reported, the suite goes on
            rows.append({"case": case.name, **asdict(case), "error": f"{type(exc).__name__}: {exc}"})
        rows[-1]["wall_seconds"] = time.perf_counter() - case_started
        rows[-1]["estimated_seconds"] = estimate
    resident.release()
    return {"suite": "gpu", "device": torch.cuda.get_device_name(), "gpus": gpus,
            "capability": list(caps.capability or ()), "size": f"{WIDTH}*{HEIGHT}", "frames": FRAMES,
            "flops_per_forward": flops, "cases": rows, "total_seconds": time.perf_counter() - started,
            "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class _Resident:
    """The bf16 14B shared by the nan, eager and compiled cases; released before a case that builds its own."""

    def __init__(self, device: str):
        self.device = device
        self.model: Any = None

    def get(self) -> Any:
        if self.model is None:
            self.model = build_model("14b", self.device, "none")
        return self.model

    def release(self) -> None:
        self.model = None
        _return_gpu_memory()


def _run_case(case: Case, device: str, resident: _Resident) -> dict[str, Any]:
    if case.kind == "correctness":
        return {"case": case.name, **asdict(case), **correctness(device)}
    started = time.perf_counter()
    if case.kind == "nan":
        model = resident.get()
        return {"case": case.name, **asdict(case), "build_seconds": time.perf_counter() - started,
                **nan_check(model)}
    if case.fresh_build:
        resident.release()
    if case.kind == "sequence_parallel":
        return _row(case, run_bench(_config(case, device)))
    model = build_model(RandomSpec.default("14b", device).encode(), device, case.offload) if case.fresh_build \
        else resident.get()
    load_seconds = time.perf_counter() - started
    apply_gpu_levers(model, compile_blocks=case.compile_blocks, fp8=case.fp8)
    result = _row(case, bench_loaded(_config(case, device), model, load_seconds, RandomSpec.default("14b", device)))
    del model
    _return_gpu_memory()
    return result


def print_table(report: dict[str, Any]) -> None:
    """One line per case: what ran, and its figures (or why it did not run)."""
    print(f"{'case':<30} {'steps':>5} {'evals':>9} {'s/step':>8} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9}  "
          f"{'est s':>6} {'wall s':>7}  note")
    for row in report["cases"]:
        evals = (f"{row['transformer_evaluations']}/{row['transformer_evaluations_skipped']}"
                 if "transformer_evaluations" in row else f"<={row['forwards']}" if row.get("forwards") else "")

        def num(key: str, fmt: str, row: dict = row) -> str:
            return format(row[key], fmt) if row.get(key) is not None else ""

        note = row.get("skipped") or row.get("error") or ""
        if "ok" in row:
            note = note or json.dumps({k: v for k, v in row.items() if k in (
                "ok", "forward_relative_l2", "frames_mean_abs_difference", "finite", "seconds")})
        print(f"{row['case']:<30} {row.get('steps', ''):>5} {evals:>9} {num('seconds_per_step', '.2f'):>8} "
              f"{num('achieved_tflops', '.0f'):>8} {num('mfu', '.2f'):>6} {num('peak_gpu_memory_gib', '.1f'):>9}  "
              f"{num('estimated_seconds', '.0f'):>6} {num('wall_seconds', '.0f'):>7}  {note}")
    total = report.get("total_seconds", report.get("estimated_total_seconds"))
    print(f"total {total:.0f} s" + (" (estimated)" if "estimated_total_seconds" in report else ""))


def write_report(report: dict[str, Any], out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")

