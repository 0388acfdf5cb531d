"""What every annotator shares: the progress callback, the callable protocol, uint8 <-> float frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from vace.pipelines.media.codec import from_uint8, to_uint8

ProgressFn = Callable[[int, int], None]

__all__ = ["Annotator", "ProgressFn", "from_uint8", "to_uint8"]


class Annotator(Protocol):
    name: str

    def __call__(self, frames: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray: ...
