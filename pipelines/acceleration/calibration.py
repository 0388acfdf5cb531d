"""MagCache calibration files: per-step residual magnitude ratios stored beside a model's weights
(DIR/magcache_calibration.json). `vace calibrate` (pipelines/bench/calibrate.py) measures them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CALIBRATION_FILE = "magcache_calibration.json"
FORMAT_VERSION = 1


def calibration_path(model_path: str | Path) -> Path:
    return Path(model_path) / CALIBRATION_FILE


def load_calibration(model_path: str | Path | None) -> dict[str, Any] | None:
    """The stored calibration of a model directory, or None when absent or unreadable."""
    if model_path is None:
        return None
    path = calibration_path(model_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    ratios = data.get("ratios")
    if data.get("version") != FORMAT_VERSION or not isinstance(ratios, dict) or not ratios.get("cond"):
        return None
    if not all(isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) for v in ratios.values()):
        return None
    return data


def save_calibration(record: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path
