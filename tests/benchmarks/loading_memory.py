"""Loading memory: peak resident memory while load_pipeline() opens a checkpoint, against its bytes on disk.

    python -m tests.benchmarks.loading_memory                  # the real Wan2.1-VACE-1.3B transformer + Wan VAE
    python -m tests.benchmarks.loading_memory --shape tiny     # a toy checkpoint (what the test runs)

Writes a checkpoint in the diffusers layout with random weights -- the real 1.3B transformer configuration in
bf16 (as shipped, sharded with an index like the published files), the real Wan2.1 VAE in fp32, the UMT5
encoder reduced to two layers (UMT5-XXL alone is 11 GB) in bf16, the tiny tokenizer, the scheduler -- then, in
a fresh process, loads it with load_pipeline(device="cpu", dtype="bfloat16") and reports the peak resident set
above the process's baseline (imports done), once every weight has been read, divided by the checkpoint's bytes
on disk. Memory-mapped weight pages count: they are resident memory too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.benchmarks.rss import MIB, emit, peak_since_reset, report, reset_peak, run_child

MODULE = "tests.benchmarks.loading_memory"
SHARD_BYTES = 2 * 2**30  # the published transformers are split into files of a few GB with an index


def _random_state(model: object, dtype: object) -> dict:
    """Random tensors for every entry of a (meta-device) model's state dict, in `dtype`."""
    import torch

    return {name: torch.empty(t.shape, dtype=dtype).uniform_(-0.02, 0.02)
            for name, t in model.state_dict().items()}


def _save_sharded(state: dict, folder: Path, stem: str) -> None:
    """safetensors shards of at most SHARD_BYTES plus the `<stem>.safetensors.index.json` weight map."""
    from safetensors.torch import save_file

    shards: list[dict] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / f"{stem}.safetensors"))
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / file))
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / f"{stem}.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_checkpoint(root: Path, shape: str) -> Path:
    """A diffusers-layout checkpoint with random weights at `shape` (1.3b: real transformer and VAE)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACETransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vace.pipelines.fixtures.tiny_model import resolve_model
    from vace.weights.configs import TRANSFORMERS, UMT5_XXL, UNIPC_FLOW, WAN21_VAE

    tiny = resolve_model("tiny")
    if shape == "tiny":
        shutil.copytree(tiny, root)
        return root
    torch.manual_seed(0)
    with torch.device("meta"):
        transformer = WanVACETransformer3DModel(**TRANSFORMERS[shape])
        vae = AutoencoderKLWan(**WAN21_VAE)
        encoder = UMT5EncoderModel(UMT5Config(**dict(UMT5_XXL, num_layers=2)))
    for sub, model, dtype, stem in (("transformer", transformer, torch.bfloat16, "diffusion_pytorch_model"),
                                    ("vae", vae, torch.float32, "diffusion_pytorch_model"),
                                    ("text_encoder", encoder, torch.bfloat16, "model")):
        folder = root / sub
        folder.mkdir(parents=True)
        if sub == "text_encoder":
            model.config.torch_dtype = "bfloat16"
            model.config.save_pretrained(folder)
            state = _random_state(model, dtype)
            state.pop("encoder.embed_tokens.weight", None)  # tied to `shared`, as transformers saves it
        else:
            model.save_config(folder)
            state = _random_state(model, dtype)
        _save_sharded(state, folder, stem)
        del state
    shutil.copytree(tiny / "tokenizer", root / "tokenizer")
    UniPCMultistepScheduler(**UNIPC_FLOW).save_config(root / "scheduler")
    shutil.copy(tiny / "model_index.json", root / "model_index.json")
    return root


def checkpoint_bytes(root: Path) -> dict[str, int]:
    return {sub.name: sum(f.stat().st_size for f in sub.glob("*.safetensors"))
            for sub in sorted(root.iterdir()) if sub.is_dir() and any(sub.glob("*.safetensors"))}


def measure(root: Path, dtype: str | None) -> dict:
    """In this (fresh) process: load the tiny bundle once (imports, lazy module set-up), reset the peak, load,
    then read every weight."""
    import torch

    from vace.pipelines.engine.loading import load_pipeline
    from vace.pipelines.fixtures.tiny_model import resolve_model

    load_pipeline(resolve_model("tiny"), device="cpu", dtype=dtype)
    baseline = reset_peak()
    started = time.perf_counter()
    model = load_pipeline(root, device="cpu", dtype=dtype)
    seconds = time.perf_counter() - started
    loaded = peak_since_reset() - baseline
    # Mapped weights are read lazily: touch every one, as the first forward would, so all of it is resident.
    with torch.inference_mode():
        for module in model.pipeline.components.values():
            for tensor in (*module.parameters(), *module.buffers()) if hasattr(module, "parameters") else ():
                tensor.sum()
    peak = peak_since_reset() - baseline
    dtypes = {name: _bytes_by_dtype(m) for name, m in model.pipeline.components.items() if hasattr(m, "parameters")}
    return {"peak_above_baseline_bytes": peak, "peak_during_load_pipeline_bytes": loaded, "seconds": seconds,
            "dtypes": dtypes}


def _bytes_by_dtype(module: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in module.parameters():
        key = str(p.dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + p.numel() * p.element_size()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1.3b", choices=["1.3b", "tiny"])
    parser.add_argument("--dtype", default="bfloat16", help="load_pipeline(dtype=...) (the default keeps bf16)")
    parser.add_argument("--keep", help="write the checkpoint here and keep it (default: a temporary folder)")
    parser.add_argument("--out", help="also write the JSON report here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        emit(measure(Path(args.measure), args.dtype))
        return 0
    with tempfile.TemporaryDirectory(prefix="vace-load-mem-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp) / "checkpoint"
        started = time.perf_counter()
        if not (root / "model_index.json").exists():
            write_checkpoint(root, args.shape)
        written = time.perf_counter() - started
        sizes = checkpoint_bytes(root)
        result = run_child(MODULE, ["--measure", str(root), "--dtype", args.dtype])
    disk = sum(sizes.values())
    ratio = result["peak_above_baseline_bytes"] / disk
    print(f"checkpoint ({args.shape}, written in {written:.0f} s): "
          + ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in sizes.items()) + f" = {disk / MIB:.0f} MiB on disk")
    print(f"load_pipeline(device=cpu, dtype={args.dtype}) in {result['seconds']:.1f} s, then every weight read: peak "
          f"{result['peak_above_baseline_bytes'] / MIB:.0f} MiB above baseline -> {ratio:.2f} x the bytes on disk "
          f"({result['peak_during_load_pipeline_bytes'] / MIB:.0f} MiB during load_pipeline itself: the files are "
          f"mapped, not read); loaded {result['dtypes']}")
    return report({"shape": args.shape, "checkpoint_bytes": sizes, "disk_bytes": disk, **result, "ratio": ratio},
                  args.out)


if __name__ == "__main__":
    sys.exit(main())
