"""Open a VACE pipeline from a local diffusers directory, never touching the network."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vace.weights.catalog import EQUIVALENT_CLASSES, required_components

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class WeightsError(RuntimeError):
    """A weights directory is missing, incomplete or unreadable."""


def set_offline() -> None:
    """Forbid every hub download for this process (and keep library progress bars quiet)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["DIFFUSERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def has_two_experts(index: dict[str, Any]) -> bool:
    """Whether a model_index.json declares a low-noise expert (`transformer_2`, Wan2.2 style)."""
    return bool(index.get("transformer_2") and index["transformer_2"][0])


def two_experts_at(model_dir: str | Path) -> bool:
    """Whether the model in a diffusers directory has two experts (reads its model_index.json)."""
    return has_two_experts(json.loads((Path(model_dir) / "model_index.json").read_text()))


def check_layout(root: str | Path) -> dict[str, Any]:
    """Validate the diffusers layout of root; return model_index.json or raise one WeightsError listing all gaps."""
    root = Path(root)
    if not root.is_dir():
        raise WeightsError(f"weights directory not found: {root}")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise WeightsError(f"{root} is not a diffusers pipeline directory: model_index.json is missing")
    index = json.loads(index_path.read_text())
    two_experts = has_two_experts(index)
    problems = []
    for sub, cls in required_components(two_experts).items():
        entry = index.get(sub)
        folder = root / sub
        declared = entry[1] if entry else None
        if declared not in EQUIVALENT_CLASSES.get(cls, {cls}):
            problems.append(f"model_index.json: {sub} should be {cls}, found {declared}")
        if not folder.is_dir():
            problems.append(f"{sub}/: folder missing")
            continue
        files = [p.name for p in folder.iterdir()]
        if sub == "tokenizer":
            if not any(n in files for n in ("tokenizer.json", "spiece.model", "tokenizer_config.json")):
                problems.append(f"{sub}/: no tokenizer files")
        elif sub == "scheduler":
            if "scheduler_config.json" not in files:
                problems.append(f"{sub}/scheduler_config.json: missing")
        else:
            if "config.json" not in files:
                problems.append(f"{sub}/config.json: missing")
            if not any(n.endswith(WEIGHT_SUFFIXES) for n in files):
                problems.append(f"{sub}/: no weight files (*.safetensors)")
            for shard_index in folder.glob("*.index.json"):
                shards = set(json.loads(shard_index.read_text()).get("weight_map", {}).values())
                problems += [f"{sub}/{s}: missing (listed in {shard_index.name})" for s in sorted(shards)
                             if not (folder / s).is_file()]
    if problems:
        raise WeightsError(f"incomplete weights directory {root}:\n  " + "\n  ".join(problems))
    return index


def resolve_device(device: str | None = None) -> str:
    import torch  # torch loads only where tensors are used (the API process never needs it)

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
