"""A real-shape model with random weights written once to disk in the diffusers layout, then mapped.

On a CPU every process that runs the model (a one-process bench, or each rank of a gloo render group) opens the
same files with load_pipeline at the written dtype: safetensors maps them and nothing is converted, so the ranks
share one copy of the weights in the page cache instead of each holding its own (the 1.3B with its VAE and the
reduced text encoder: up to 9.2 GiB per rank in float32, one 4.9 GiB mapping in bf16). The tensors are drawn shard by
shard (uniform in +-0.02 from a seeded generator), so writing holds one shard at a time, never the whole model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vace.pipelines.bench.random_model import RandomSpec, build_model, random_components
from vace.pipelines.engine.loading import LoadedModel, load_pipeline
from vace.pipelines.fixtures.tiny_model import resolve_model

RANDOM_WEIGHTS_FILE = "random_weights.json"  # what was written (shape, dtype, text encoder); marks such a folder
SHARD_BYTES = 2 * 2**30  # published transformers are split into files of a few GB with an index
WEIGHT_RANGE = 0.02


def plan_shards(sizes: dict[str, int], shard_bytes: int = SHARD_BYTES) -> list[list[str]]:
    """Tensor names grouped in order into shards of at most `shard_bytes` (a larger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes.items():
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def save_random_sharded(model: Any, folder: Path, stem: str, dtype: Any, seed: int = 0,
                        skip: Iterable[str] = (), shard_bytes: int = SHARD_BYTES) -> int:
    """Random tensors for every state-dict entry of `model` (meta is enough: only shapes are read), in `dtype`,
    as `<stem>.safetensors` or shards with a `<stem>.safetensors.index.json` weight map. Returns the bytes."""
    import torch  # torch loads only where tensors are used (the API process never needs it)
    from safetensors.torch import save_file  # safetensors loads only where weights are written

    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in set(skip)}
    sizes = {name: dtype.itemsize * int(torch.Size(shape).numel()) for name, shape in shapes.items()}
    shards = plan_shards(sizes, shard_bytes)
    generator = torch.Generator().manual_seed(seed)
    files = [f"{stem}.safetensors"] if len(shards) == 1 else \
        [f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for file, names in zip(files, shards, strict=True):
        tensors = {name: torch.empty(shapes[name], dtype=dtype).uniform_(-WEIGHT_RANGE, WEIGHT_RANGE,
                                                                          generator=generator) for name in names}
        save_file(tensors, str(folder / file))
        del tensors
    if len(shards) > 1:
        weight_map = {name: file for file, names in zip(files, shards, strict=True) for name in names}
        (folder / f"{stem}.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}, indent=2))
    return sum(sizes.values())


def write_random_checkpoint(spec: RandomSpec, root: Path, text_layers: int | None = None) -> Path:
    """`spec` as a diffusers pipeline folder under `root`: transformer and text encoder in spec.dtype, the VAE in
    fp32 (as shipped), the tiny tokenizer, the scheduler; `text_layers` overrides the text encoder's depth."""
    import torch  # torch loads only where tensors are used (the API process never needs it)

    parts = random_components(spec, "meta", text_layers=text_layers)
    dtype = getattr(torch, spec.dtype)
    root.mkdir(parents=True, exist_ok=True)
    for sub, dtype_, stem in (("transformer", dtype, "diffusion_pytorch_model"),
                              ("vae", torch.float32, "diffusion_pytorch_model"), ("text_encoder", dtype, "model")):
        folder = root / sub
        folder.mkdir()
        model, skip = parts[sub], ()
        if sub == "text_encoder":
            model.config.dtype = spec.dtype
            model.config.save_pretrained(folder)
            skip = ("encoder.embed_tokens.weight",)  # tied to `shared`, as transformers saves it
        else:
            model.save_config(folder)
        save_random_sharded(model, folder, stem, dtype_, skip=skip)
    tiny = resolve_model("tiny")
    shutil.copytree(tiny / "tokenizer", root / "tokenizer")
    parts["scheduler"].save_config(root / "scheduler")
    shutil.copy(tiny / "model_index.json", root / "model_index.json")
    note = spec.text_encoder_note() if text_layers is None else f"umt5-xxl reduced to {text_layers} layer(s)"
    (root / RANDOM_WEIGHTS_FILE).write_text(json.dumps({"shape": spec.shape, "dtype": spec.dtype,
                                                        "text_encoder": note}) + "\n")
    return root


def written_spec(path: str | Path) -> dict[str, str] | None:
    """What write_random_checkpoint recorded in `path`, or None for any other model reference."""
    marker = Path(path) / RANDOM_WEIGHTS_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def open_model(ref: str, device: str, offload: str = "none", text_encoder: bool = True) -> LoadedModel:
    """A bench's model: a checkpoint written here (mapped at its written dtype), an encoded RandomSpec (built in
    place), or a weights directory / tiny model (loaded)."""
    written = written_spec(ref)
    if written is None:
        return build_model(ref, device, offload, text_encoder)
    return load_pipeline(ref, device=device, name=f"random-{written['shape']}", offload=offload,
                         text_encoder=text_encoder, dtype=written["dtype"])


def rank_model(ref: str, device: str, text_encoder: bool = True) -> LoadedModel:
    """GroupSpec.loader for sharded benches: each rank opens what a one-process bench would (ranks > 0 without
    a text encoder); on a CPU every rank maps the same written checkpoint."""
    return open_model(ref, device, "none", text_encoder)
