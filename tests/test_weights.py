"""Tiny weights are deterministic and in the real layout; loading is offline; manifests catch damage."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vace.pipelines.engine.loading import load_pipeline
from vace.weights.catalog import CHECKPOINTS, EQUIVALENT_CLASSES
from vace.weights.integrity import cached_sha256, verify_manifest, write_manifest
from vace.weights.loader import WeightsError, check_layout


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tiny_is_deterministic_and_in_diffusers_layout(tmp_path):
    from vace.pipelines.fixtures.tiny_model import write_tiny

    a = write_tiny(tmp_path / "a", two_experts=True)
    b = write_tiny(tmp_path / "b", two_experts=True)
    files_a = tree_bytes(a)
    assert files_a == tree_bytes(b)
    index = json.loads(files_a["model_index.json"])
    for sub, cls in CHECKPOINTS["Wan2.2-VACE-Fun-A14B"].components.items():
        assert index[sub][1] in EQUIVALENT_CLASSES.get(cls, {cls}), (sub, index[sub])
        assert (a / sub).is_dir()
    assert index["transformer_2"] == ["diffusers", "WanVACETransformer3DModel"]
    assert index["boundary_ratio"] == 0.875


def test_catalog_names_repositories():
    assert CHECKPOINTS["Wan2.1-VACE-14B"].repo_id == "Wan-AI/Wan2.1-VACE-14B-diffusers"
    assert CHECKPOINTS["Wan2.1-VACE-1.3B"].repo_id == "Wan-AI/Wan2.1-VACE-1.3B-diffusers"
    a14b = CHECKPOINTS["Wan2.2-VACE-Fun-A14B"]
    assert a14b.two_experts and a14b.boundary_ratio == 0.875 and "transformer_2" in a14b.components


def test_loading_works_with_network_blocked(tiny_model_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = load_pipeline(tiny_model_dir, device="cpu")
    assert model.device == "cpu" and not model.two_experts
    assert model.pipeline.transformer.dtype.is_floating_point and str(model.pipeline.vae.dtype) == "torch.float32"
    assert str(model.pipeline.transformer.dtype) == "torch.float32"


def test_missing_directory_and_missing_parts_named(tiny_model_dir, tmp_path):
    with pytest.raises(WeightsError, match="weights directory not found"):
        check_layout(tmp_path / "absent")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "vae")
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError) as info:
        load_pipeline(broken, device="cpu")
    text = str(info.value)
    assert "vae/: folder missing" in text and "transformer/: no weight files" in text


def test_manifest_verify_names_every_mismatch(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    write_manifest(copy)
    assert verify_manifest(copy) == []
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (copy / "vae" / "config.json").unlink()
    (copy / "extra.txt").write_text("x")
    problems = verify_manifest(copy)
    assert problems == [
        "transformer/diffusion_pytorch_model.safetensors: sha256 mismatch (file is corrupted or was changed)",
        "vae/config.json: missing",
        "extra.txt: not in the manifest",
    ]


def test_cli_weights_commands(tmp_path, tiny_home):
    def vace(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vace.server.cli", *args], capture_output=True, text=True,
                              timeout=300)

    out = tmp_path / "bundle"
    assert vace("weights", "tiny", "--out", str(out)).returncode == 0
    assert (out / "tiny" / "model_index.json").is_file() and (out / "tiny-a14b" / "transformer_2").is_dir()
    assert vace("weights", "manifest", str(out / "tiny")).returncode == 0
    ok = vace("weights", "verify", str(out / "tiny"))
    assert ok.returncode == 0 and "all files match" in ok.stdout
    (out / "tiny" / "scheduler" / "scheduler_config.json").write_text("{}")
    bad = vace("weights", "verify", str(out / "tiny"))
    assert bad.returncode == 1 and "scheduler/scheduler_config.json: size" in bad.stderr
    listing = vace("weights", "list")
    assert "Wan-AI/Wan2.1-VACE-14B-diffusers" in listing.stdout


def test_cached_sha256_per_file_version_from_many_threads(tmp_path):
    """One digest per (path, size, mtime) shared by threads (an lru_cache, safe across threads); a file
    rewritten in place is hashed again."""
    files = [tmp_path / f"f{i}.bin" for i in range(64)]
    for i, path in enumerate(files):
        path.write_bytes(bytes([i]) * 100)
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(cached_sha256, files * 8))
    assert digests == [hashlib.sha256(bytes([i % 64]) * 100).hexdigest() for i in range(64 * 8)]
    stat = files[0].stat()
    files[0].write_bytes(b"other" * 20)
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert cached_sha256(files[0]) == hashlib.sha256(b"other" * 20).hexdigest()
