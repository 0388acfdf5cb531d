"""Frame interpolation: k new frames between each pair of rendered frames (RIFE or FILM, local weights).

N frames become (N - 1) * (k + 1) + 1; played at (k + 1) times the fps they keep the clip's duration.
Weights: vace.weights.catalog.INTERPOLATORS (`rife/flownet.pkl`, `film/film_net_fp32.pt` under the interpolators
root).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vace.pipelines.engine.render import RenderCancelled
from vace.pipelines.outputs.interpolation.film import FilmInterpolator
from vace.pipelines.outputs.interpolation.rife import RifeInterpolator
from vace.weights.catalog import INTERPOLATORS

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

CLASSES = {"rife": RifeInterpolator, "film": FilmInterpolator}


class Interpolator(Protocol):
    name: str

    def between(self, image0, image1, times: list[float]) -> list:
        """(1, 3, H, W) tensors in [0, 1] -> the frames at each time (0 < t < 1), same shape."""


def interpolated_count(num_frames: int, k: int) -> int:
    """Frames after inserting k between each pair."""
    return (num_frames - 1) * (k + 1) + 1 if num_frames > 0 else 0


_LOADED: dict[tuple[str, str, str], Interpolator] = {}


def load_interpolator(name: str, folder: str | Path, device: str = "cpu") -> Interpolator:
    """The named interpolator from its weights folder on `device` (kept loaded for later jobs). A missing file
    raises FileNotFoundError naming the folder and how to get it."""
    if name not in CLASSES:
        raise ValueError(f"unknown interpolator {name!r} (known: {', '.join(CLASSES)})")
    folder = Path(folder)
    missing = INTERPOLATORS[name].describe_missing(folder)
    if missing:
        raise FileNotFoundError(missing)
    key = (name, str(folder.resolve()), device)
    if key not in _LOADED:
        _LOADED[key] = CLASSES[name](folder / INTERPOLATORS[name].files[0], device=device)
    return _LOADED[key]


def interpolate(frames: np.ndarray, k: int, model: Interpolator, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, device: str = "cpu") -> np.ndarray:
    """(N, H, W, 3) float frames in [0, 1] -> (N - 1) * (k + 1) + 1 frames, k made between each pair.

    progress(i, N - 1) is called after each pair; cancel() is checked before each pair and raises
    RenderCancelled when it answers True.
    """
    if k == 0 or len(frames) < 2:
        return frames
    times = [j / (k + 1) for j in range(1, k + 1)]
    pairs = len(frames) - 1

    def tensor(frame: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)).permute(2, 0, 1)[None].to(device)

    out = np.empty((interpolated_count(len(frames), k), *frames.shape[1:]), dtype=np.float32)
    right = tensor(frames[0])
    for i in range(pairs):
        if cancel is not None and cancel():
            raise RenderCancelled(f"cancelled while interpolating, after {i}/{pairs} frame pairs")
        left, right = right, tensor(frames[i + 1])
        out[i * (k + 1)] = frames[i]
        for j, made in enumerate(model.between(left, right, times), start=1):
            out[i * (k + 1) + j] = made[0].permute(1, 2, 0).float().cpu().numpy()
        if progress is not None:
            progress(i + 1, pairs)
    out[-1] = frames[-1]
    return out
