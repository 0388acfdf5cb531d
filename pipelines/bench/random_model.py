"""Models of the real shape with random weights: the real classes at the published configs (weights.configs).

On CUDA they are built in place on the GPU (no checkpoint, no CPU copy): the transformer and text encoder in bf16
(the modules diffusers keeps in fp32 stay fp32, as from_pretrained does), the VAE in fp32, as served. On a CPU the
full UMT5-XXL (5.7 B parameters) does not fit a test machine, so the text encoder is reduced (one layer, the
tokenizer's vocabulary; same class, same output width); the transformer and VAE are the real ones, written once
as a checkpoint that every process maps (pipelines.bench.random_checkpoint).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vace.pipelines.engine.loading import LoadedModel, load_pipeline
from vace.pipelines.engine.memory import apply_memory_mode, module_bytes, resolve_offload
from vace.pipelines.fixtures.tiny_model import resolve_model
from vace.weights.configs import TRANSFORMERS, UMT5_XXL, UNIPC_FLOW, WAN21_VAE
from vace.weights.loader import resolve_device

DTYPES = ("bfloat16", "float32")


class BenchError(RuntimeError):
    """The benchmark cannot run as asked."""


@dataclass(frozen=True)
class RandomSpec:
    """A real shape to build: `shape` (14b, 1.3b), weight dtype, full or reduced text encoder."""

    shape: str
    dtype: str = "bfloat16"
    full_text_encoder: bool = True

    def __post_init__(self) -> None:
        if self.shape not in TRANSFORMERS:
            raise BenchError(f"unknown model shape {self.shape!r}; known: {', '.join(TRANSFORMERS)}")
        if self.dtype not in DTYPES:
            raise BenchError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPES)}")

    @classmethod
    def default(cls, shape: str, device: str, dtype: str | None = None) -> RandomSpec:
        """bf16 (as shipped) unless `dtype`; the full text encoder on CUDA, the reduced one elsewhere. bf16 on a
        CPU too: it halves the mapped weights (the 1.3B's transformer: 4.0 GiB, not 8.0), and on CPUs without bf16
        units costs about twice the time of float32 matmuls (`--dtype float32` when memory allows)."""
        return cls(shape, dtype or "bfloat16", full_text_encoder=device.startswith("cuda"))

    def encode(self) -> str:
        """As one string (what a render group's rank loader receives as its model)."""
        return f"{self.shape}|{self.dtype}|{'full' if self.full_text_encoder else 'reduced'}"

    @classmethod
    def decode(cls, text: str) -> RandomSpec:
        shape, dtype, encoder = text.split("|")
        return cls(shape, dtype, encoder == "full")

    def text_encoder_note(self) -> str:
        if self.full_text_encoder:
            return "umt5-xxl (24 layers)"
        return "umt5-xxl reduced to 1 layer and the tokenizer's vocabulary (width = the transformer's text_dim)"


def keep_fp32_modules(model: Any) -> Any:
    """Cast the modules the class asks to keep in fp32 (rope, time embedder, norms, ...) back to fp32."""
    import torch  # torch loads only where tensors are used (the API process never needs it)

    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(part in keep for part in name.split(".")):
            module.to(torch.float32)
    return model


def random_components(spec: RandomSpec, device: str, text_encoder: bool = True,
                      text_layers: int | None = None) -> dict[str, Any]:
    """The pipeline's components at `spec` with random weights, allocated on `device` (meta works: nothing is
    allocated). The text encoder is None unless `text_encoder`; `text_layers` overrides its depth."""
    import torch  # torch loads only where tensors are used (the API process never needs it)

    # diffusers loads only where a model is built
    from diffusers import UniPCMultistepScheduler, WanVACETransformer3DModel

    # transformers loads only where a model is built
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from vace.pipelines.engine.wan_vae import WanVAE  # torch-bound: loads diffusers (the VAE the renderer loads)

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny") / "tokenizer"))
    dtype = getattr(torch, spec.dtype)
    transformer_config = TRANSFORMERS[spec.shape]
    encoder_config = dict(UMT5_XXL) if spec.full_text_encoder else dict(
        UMT5_XXL, num_layers=1, vocab_size=len(tokenizer), d_model=transformer_config["text_dim"])
    if text_layers is not None:
        encoder_config["num_layers"] = text_layers
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            transformer = keep_fp32_modules(WanVACETransformer3DModel(**transformer_config)).eval()
            encoder = UMT5EncoderModel(UMT5Config(**encoder_config)).eval() if text_encoder else None
        torch.set_default_dtype(torch.float32)
        with torch.device(device):
            vae = WanVAE(**WAN21_VAE).eval()
    finally:
        torch.set_default_dtype(previous)
    return {"transformer": transformer, "text_encoder": encoder, "vae": vae, "tokenizer": tokenizer,
            "scheduler": UniPCMultistepScheduler(**UNIPC_FLOW)}


def weight_bytes(spec: RandomSpec) -> int:
    """Bytes of the weights random_components(spec) allocates (counted on the meta device)."""
    parts = random_components(spec, "meta")
    return sum(p.numel() * p.element_size() for name in ("transformer", "text_encoder", "vae")
               for p in parts[name].parameters())


def available_bytes(device: str) -> int | None:
    """Free memory where the weights will be allocated: free GPU memory, or MemAvailable of the host."""
    import torch  # torch loads only where tensors are used (the API process never needs it)

    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0]) if torch.cuda.is_available() else None
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def check_fits(spec: RandomSpec, device: str, writes_checkpoint: bool) -> None:
    """Refuse, naming the sizes, a build whose weights alone exceed the free memory where they would live (`device`:
    the GPU, each rank its own, or the host, where one checkpoint is mapped by every rank) or, when it
    `writes_checkpoint`, the temporary folder the checkpoint is written to."""
    need = weight_bytes(spec)
    free = available_bytes(device)
    cuda = device.startswith("cuda")
    if free is not None and need > free:
        raise BenchError(f"--model {spec.shape} needs {need / 2**30:.1f} GiB of {spec.dtype} weights on {device}; "
                         f"only {free / 2**30:.1f} GiB of {'GPU' if cuda else 'host'} memory is free"
                         + ("" if cuda else "; on a CPU use --model 1.3b or tiny"))
    disk = shutil.disk_usage(tempfile.gettempdir()).free
    if writes_checkpoint and need > disk:
        raise BenchError(f"--model {spec.shape} writes {need / 2**30:.1f} GiB of weights to {tempfile.gettempdir()}; "
                         f"only {disk / 2**30:.1f} GiB of disk is free there (set TMPDIR)")


def build_model(spec: str, device: str, offload: str, text_encoder: bool = True,
                dtype: str | None = None) -> LoadedModel:
    """A LoadedModel: random weights at a real shape (14b, 1.3b, or an encoded RandomSpec) or loaded (tiny,
    tiny-a14b, a directory); without a text encoder unless `text_encoder`."""
    device = resolve_device(device)
    if "|" in spec:
        random = RandomSpec.decode(spec)
    elif spec in TRANSFORMERS:
        random = RandomSpec.default(spec, device, dtype)
    else:
        return load_pipeline(resolve_model(spec), device=device, offload=offload, text_encoder=text_encoder)
    from diffusers import WanVACEPipeline  # diffusers loads only where a model is built

    # Offloaded modes (and `auto`, which decides from the sizes) start from host memory; `none` allocates in place.
    # Random initialisation is far faster on a GPU, so weights that fit there are made there and then moved.
    fits = device.startswith("cuda") and weight_bytes(random) < (available_bytes(device) or 0)
    components = random_components(random, device if offload == "none" or fits else "cpu", text_encoder=text_encoder)
    if offload != "none" and fits:
        for module in (components["transformer"], components["text_encoder"], components["vae"]):
            if module is not None:
                module.to("cpu")
    mode = resolve_offload(offload, device, module_bytes(components))
    pipe = WanVACEPipeline(boundary_ratio=None, **components)
    pipe.set_progress_bar_config(disable=True)
    apply_memory_mode(pipe, mode, device)
    return LoadedModel(name=f"random-{random.shape}", path=Path(f"<random {random.shape}>"), pipeline=pipe,
                       device=device, two_experts=False, offload=mode)
