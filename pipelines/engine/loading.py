"""Open a VACE pipeline from a local diffusers directory (never touching the network) and place it per the
memory mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vace.pipelines.engine.memory import apply_memory_mode, check_mode, component_bytes, resolve_offload
from vace.weights.loader import WeightsError, check_layout, has_two_experts, resolve_device, set_offline


def _quiet_libraries() -> None:
    import diffusers  # diffusers loads only where a model is built
    import transformers  # transformers loads only where a model is built

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class LoadedModel:
    """A loaded pipeline plus what the rest of the system needs to know about it."""

    name: str
    path: Path
    pipeline: Any
    device: str
    two_experts: bool
    offload: str = "none"
    levers: dict[str, Any] = field(default_factory=dict)  # GPU levers applied (pipelines.acceleration)

    @property
    def transformers(self) -> list[Any]:
        return [t for t in (self.pipeline.transformer, getattr(self.pipeline, "transformer_2", None)) if t is not None]


def load_pipeline(root: str | Path, device: str | None = None, name: str | None = None,
                  offload: str = "none", text_encoder: bool = True, dtype: str | None = None) -> LoadedModel:
    """Load every component from root, local files only: bf16 transformer/text encoder + fp32 VAE on CUDA,
    float32 everywhere on CPU unless `dtype` (bfloat16 | float32) says otherwise for the transformer(s) and text
    encoder. `offload` is a memory mode of pipelines.memory (none|model|group|sequential|auto).
    `text_encoder=False` leaves the text encoder unloaded (None): the pipeline then needs prompt embeddings."""
    import torch  # torch loads only where tensors are used (the API process never needs it)

    # diffusers loads only where a model is built
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel
    from diffusers.schedulers import UniPCMultistepScheduler  # diffusers loads only where a model is built
    from transformers import AutoTokenizer, UMT5EncoderModel  # transformers loads only where a model is built

    from vace.pipelines.engine.wan_vae import WanVAE  # torch-bound: loads diffusers

    set_offline()
    _quiet_libraries()
    root = Path(root)
    index = check_layout(root)
    device = resolve_device(device)
    big = getattr(torch, dtype) if dtype else torch.bfloat16 if device.startswith("cuda") else torch.float32
    two_experts = has_two_experts(index)
    local = {"local_files_only": True}
    try:
        parts = {
            "tokenizer": AutoTokenizer.from_pretrained(str(root / "tokenizer"), **local),
            "text_encoder": UMT5EncoderModel.from_pretrained(str(root / "text_encoder"), dtype=big, **local)
            if text_encoder else None,
            "vae": WanVAE.from_pretrained(str(root), subfolder="vae", torch_dtype=torch.float32, **local),
            "scheduler": UniPCMultistepScheduler.from_pretrained(str(root), subfolder="scheduler", **local),
            "transformer": WanVACETransformer3DModel.from_pretrained(
                str(root), subfolder="transformer", torch_dtype=big, **local),
        }
        if two_experts:
            parts["transformer_2"] = WanVACETransformer3DModel.from_pretrained(
                str(root), subfolder="transformer_2", torch_dtype=big, **local)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"could not load weights from {root}: {exc}") from exc
    pipe = WanVACEPipeline(boundary_ratio=index.get("boundary_ratio"), **parts)
    pipe.set_progress_bar_config(disable=True)
    offload = apply_memory_mode(pipe, resolve_offload(check_mode(offload), device, component_bytes(root)), device)
    return LoadedModel(name=name or root.name, path=root, pipeline=pipe, device=device, two_experts=two_experts,
                       offload=offload)
