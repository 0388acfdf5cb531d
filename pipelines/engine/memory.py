"""Memory modes: where the weights live between uses, so the 14B models fit 24, 48 and 80 GB cards.

- none:       every component on the GPU (fastest; 14B needs about 47 GB of weights plus activations).
- model:      diffusers model CPU offload: one whole component on the GPU at a time (transformer 35 GB).
- group:      diffusers group offloading: transformer blocks one at a time (prefetched on a CUDA stream),
              text encoder layer by layer, VAE resident; a few GB of weights on the GPU.
- sequential: leaf-level group offloading of every component without prefetch: the least memory, the
              slowest. (accelerate's enable_sequential_cpu_offload breaks on transformers 5 UMT5; the
              leaf-level group offload moves the same pieces the same way.)
- auto:       picks from the free GPU memory at start and the weights' size (see choose_offload).
Every mode except `none` also turns on VAE tiling and slicing.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from vace.weights.safetensors_header import read_header

log = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "model", "group", "sequential", "auto")
GIB = 1024**3
_SERVING_BYTES = {"transformer": 2, "transformer_2": 2, "text_encoder": 2, "vae": 4}  # bf16 / bf16 / fp32


def check_mode(mode: str) -> str:
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"unknown offload mode {mode!r}; known: {', '.join(OFFLOAD_MODES)}")
    return mode


def _safetensors_numel(path: Path) -> int:
    """Element count of every tensor in a .safetensors file, read from its header only."""
    return sum(math.prod(info.shape) for info in read_header(path).values())


def component_bytes(root: str | Path) -> dict[str, int]:
    """Bytes each component of a diffusers directory takes at serving precision (bf16, VAE fp32)."""
    root = Path(root)
    sizes = {}
    for sub, width in _SERVING_BYTES.items():
        files = sorted((root / sub).glob("*.safetensors")) if (root / sub).is_dir() else []
        if files:
            sizes[sub] = width * sum(_safetensors_numel(f) for f in files)
    return sizes


def module_bytes(components: dict[str, Any]) -> dict[str, int]:
    """The same figure for components already built in memory (e.g. random-weight benchmark models)."""
    sizes = {}
    for sub, width in _SERVING_BYTES.items():
        module = components.get(sub)
        if module is not None:
            sizes[sub] = width * sum(p.numel() for p in module.parameters())
    return sizes


def headroom_bytes(sizes: dict[str, int]) -> int:
    """Activations, the step cache's residuals, VAE decoding and the CUDA context: 4 GiB or 25% of the weights."""
    return max(4 * GIB, int(0.25 * sum(sizes.values())))


def choose_offload(free_bytes: int, sizes: dict[str, int]) -> str:
    """The fastest mode whose resident weights plus headroom fit in free_bytes."""
    margin = headroom_bytes(sizes)
    if sum(sizes.values()) + margin <= free_bytes:
        return "none"
    if max(sizes.values(), default=0) + margin <= free_bytes:
        return "model"
    if margin <= free_bytes:
        return "group"
    return "sequential"


def free_gpu_bytes(device: str) -> int | None:
    import torch  # torch loads only where tensors are used (the API process never needs it)

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def resolve_offload(mode: str, device: str, sizes: dict[str, int]) -> str:
    """`auto` -> a concrete mode (always `none` off CUDA); other modes are returned as given."""
    check_mode(mode)
    if mode != "auto":
        return mode
    free = free_gpu_bytes(device)
    if free is None:
        return "none"
    chosen = choose_offload(free, sizes)
    log.info("offload auto: %.1f GiB free, weights %.1f GiB (largest %.1f GiB) -> %s", free / GIB,
             sum(sizes.values()) / GIB, max(sizes.values(), default=0) / GIB, chosen)
    return chosen


def apply_memory_mode(pipe: Any, mode: str, device: str) -> str:
    """Place a pipeline built on the CPU according to `mode` (not `auto`: resolve it first); returns it."""
    import torch  # torch loads only where tensors are used (the API process never needs it)
    from diffusers.hooks import apply_group_offloading  # diffusers loads only where a model is built

    check_mode(mode)
    if mode == "auto":
        raise ValueError("resolve 'auto' with resolve_offload() before applying it")
    if mode == "none":
        pipe.to(device)
        return mode
    onload, offload = torch.device(device), torch.device("cpu")
    transformers = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
    if mode == "model":
        pipe.enable_model_cpu_offload(device=onload)
    elif mode == "group":
        stream = onload.type == "cuda"
        for transformer in transformers:
            apply_group_offloading(transformer, onload_device=onload, offload_device=offload,
                                   offload_type="block_level", num_blocks_per_group=1, use_stream=stream)
        if pipe.text_encoder is not None:  # None on sequence-parallel ranks > 0
            apply_group_offloading(pipe.text_encoder, onload_device=onload, offload_device=offload,
                                   offload_type="leaf_level", use_stream=stream)
        pipe.vae.to(onload)
    else:  # sequential
        for module in (m for m in (*transformers, pipe.text_encoder, pipe.vae) if m is not None):
            apply_group_offloading(module, onload_device=onload, offload_device=offload, offload_type="leaf_level")
    pipe.vae.enable_tiling()
    pipe.vae.enable_slicing()
    return mode
