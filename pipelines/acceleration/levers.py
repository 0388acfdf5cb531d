"""Acceleration: the per-job step cache of a preset, and the model-wide GPU levers chosen at start.

GPU levers (CUDA only, reported in LoadedModel.levers and /health):
- attention backend: the fastest available of sage > flash-3 (Hopper) > flash > native (PyTorch SDPA),
  set through diffusers' attention dispatcher;
- regional compilation: each repeated block's forward is compiled once. The block *forward* is compiled
  (not the module call, as `compile_repeated_blocks` does) so that the step-cache hooks installed per
  job wrap the compiled code instead of invalidating it;
- FP8 weights (opt-in, compute capability >= 8.9, torchao): dynamic float8 activations and weights for
  the transformer blocks' linear layers.
They are model-wide because compiling or quantizing per job would cost more than a job saves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vace.pipelines.acceleration.calibration import load_calibration
from vace.pipelines.acceleration.presets import Preset, get_preset
from vace.pipelines.acceleration.step_cache import CachePolicy, StepCache

log = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("sage", "_flash_3", "flash", "native")


@dataclass(frozen=True)
class GpuCapabilities:
    """What the attention/FP8 choices depend on; `packages` lists the importable optional kernels."""

    cuda: bool
    name: str = "cpu"
    capability: tuple[int, int] | None = None
    packages: frozenset[str] = field(default_factory=frozenset)


def probe_capabilities(device: str = "cuda") -> GpuCapabilities:
    import torch  # torch loads only where tensors are used (the API process never needs it)

    packages = frozenset(p for p in ("sageattention", "flash_attn", "flash_attn_interface", "torchao")
                         if importlib.util.find_spec(p) is not None)
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return GpuCapabilities(cuda=False, packages=packages)
    index = torch.device(device).index or 0
    return GpuCapabilities(cuda=True, name=torch.cuda.get_device_name(index),
                           capability=tuple(torch.cuda.get_device_capability(index)), packages=packages)


def choose_attention_backend(caps: GpuCapabilities, requested: str = "auto") -> str:
    """The diffusers attention backend to use: `requested` if usable, else the fastest available."""
    usable = {"native"}
    if caps.cuda and caps.capability is not None:
        if "sageattention" in caps.packages and caps.capability >= (8, 0):
            usable.add("sage")
        if "flash_attn_interface" in caps.packages and caps.capability[0] == 9:
            usable.add("_flash_3")
        if "flash_attn" in caps.packages and caps.capability >= (8, 0):
            usable.add("flash")
    if requested != "auto":
        if requested not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {requested!r}; known: auto, {', '.join(ATTENTION_BACKENDS)}")
        if requested in usable:
            return requested
        log.warning("attention backend %s is not available here; choosing automatically", requested)
    return next(b for b in ATTENTION_BACKENDS if b in usable)


def _compile_repeated_block_forwards(transformer: Any) -> int:
    import torch  # torch loads only where tensors are used (the API process never needs it)

    count = 0
    for module in transformer.modules():
        if type(module).__name__ in transformer._repeated_blocks:
            module.forward = torch.compile(module.forward)
            count += 1
    return count


def _quantize_fp8(transformer: Any) -> None:
    import torch  # torch loads only where tensors are used (the API process never needs it)

    # optional: torchao only for --fp8
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def in_blocks(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and fqn.startswith(("blocks.", "vace_blocks."))

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=in_blocks)


def apply_gpu_levers(model: Any, attention: str = "auto", compile_blocks: bool = True, fp8: bool = False,
                     caps: GpuCapabilities | None = None) -> dict[str, Any]:
    """Apply the model-wide levers that fit this machine; record and return what was applied."""
    caps = caps or probe_capabilities(model.device)
    report: dict[str, Any] = {"device": caps.name, "attention_backend": "native", "compiled_blocks": 0,
                              "fp8": False, "notes": []}
    if not caps.cuda:
        report["notes"].append("not on CUDA: attention backend, compilation and FP8 are not applied")
        model.levers = report
        return report
    backend = choose_attention_backend(caps, attention)
    if fp8:
        if caps.capability is None or caps.capability < (8, 9):
            report["notes"].append("fp8 needs compute capability 8.9 or newer (Ada/Hopper)")
        elif "torchao" not in caps.packages:
            report["notes"].append("fp8 needs torchao, which is not installed")
        else:
            for transformer in model.transformers:
                _quantize_fp8(transformer)
            report["fp8"] = True
    for transformer in model.transformers:
        if backend != "native":
            transformer.set_attention_backend(backend)
    report["attention_backend"] = backend
    if compile_blocks:
        if model.offload in ("group", "sequential"):
            report["notes"].append(f"compilation skipped with {model.offload} offload (hooks inside the blocks)")
        else:
            report["compiled_blocks"] = sum(_compile_repeated_block_forwards(t) for t in model.transformers)
    model.levers = report
    log.info("GPU levers: %s", report)
    return report


def cache_policy(preset: Preset, calibration: dict[str, Any] | None, num_steps: int) -> CachePolicy | None:
    """The step-cache policy of a preset for one job: MagCache with calibration, First Block Cache without."""
    if not preset.step_cache:
        return None
    warmup = preset.warmup_steps(num_steps)
    if calibration is not None:
        return CachePolicy("magcache", threshold=preset.mag_threshold, max_skip_steps=preset.mag_max_skip_steps,
                           warmup_steps=warmup, mag_ratios=calibration["ratios"])
    return CachePolicy("fbcache", threshold=preset.fbc_threshold, max_skip_steps=preset.fbc_max_skip_steps,
                       warmup_steps=warmup)


@contextlib.contextmanager
def preset_applied(model: Any, preset_name: str, num_steps: int, do_cfg: bool, metrics: dict[str, Any],
                   calibration_loader: Callable[[Any], dict | None] = load_calibration) -> Iterator[None]:
    """Install the preset's step cache on the model for one job and record what happened in `metrics`.

    The cache's hooks are installed fresh and removed afterwards, so no state survives between jobs;
    with preset "none" nothing is installed at all.
    """
    preset = get_preset(preset_name)
    policy = cache_policy(preset, calibration_loader(getattr(model, "path", None)), num_steps)
    metrics["preset"] = preset.name
    metrics["step_cache"] = policy.method if policy else "none"
    if getattr(model, "levers", None):
        metrics["gpu_levers"] = {k: v for k, v in model.levers.items() if k != "notes"}
    if policy and policy.method == "fbcache":
        note = (f"model {getattr(model, 'name', '?')} has no MagCache calibration; preset {preset.name} uses "
                f"First Block Cache (threshold {policy.threshold}) instead (run `vace calibrate --model DIR`)")
        metrics["step_cache_note"] = note
        log.info(note)
    evaluations_per_step = 2 if do_cfg else 1
    if policy is None:
        yield
        metrics["transformer_evaluations"] = num_steps * evaluations_per_step
        metrics["transformer_evaluations_skipped"] = 0
        return
    cache = StepCache(model.transformers, policy, num_steps)
    try:
        yield
    finally:
        cache.remove()
        metrics["transformer_evaluations"] = cache.stats.evaluations
        metrics["transformer_evaluations_skipped"] = cache.stats.evaluations_skipped
        metrics["skipped_steps"] = {k: list(v) for k, v in cache.stats.skipped_steps.items()}
