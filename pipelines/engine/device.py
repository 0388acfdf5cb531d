"""Checking a --device choice before any model is loaded."""

from __future__ import annotations

import re

DEVICE_FORMS = "auto | cpu | cuda | cuda:N"


def check_device(spec: str) -> str:
    """The device spec if it can run here; ValueError saying what is wrong (no GPU, no such GPU, bad form)."""
    if spec in ("auto", "cpu"):
        return spec
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise ValueError(f"expected {DEVICE_FORMS}, got {spec!r}")
    import torch  # torch loads only where tensors are used (the API process never needs it)

    if not torch.cuda.is_available():
        raise ValueError(f"{spec!r} asks for a CUDA GPU and none is visible here (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'no'}); use cpu, or auto")
    index, count = int(match[1] or 0), torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"{spec!r}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
    return spec
