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
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.benchmarks.rss import MIB, emit, peak_since_reset, report, reset_peak, run_child
from vace.pipelines.bench.random_checkpoint import write_random_checkpoint
from vace.pipelines.bench.random_model import RandomSpec
from vace.pipelines.fixtures.tiny_model import resolve_model

MODULE = "tests.benchmarks.loading_memory"


def write_checkpoint(root: Path, shape: str) -> Path:
    """A diffusers-layout checkpoint with random weights at `shape` (1.3b: real transformer and VAE)."""
    if shape == "tiny":
        shutil.copytree(resolve_model("tiny"), root)
        return root
    return write_random_checkpoint(RandomSpec(shape, "bfloat16"), root, text_layers=2)


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
