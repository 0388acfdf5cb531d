"""FILM: google-research's Frame Interpolation for Large Motion, as the TorchScript export of its PyTorch port.

The TorchScript file (`film_net_fp32.pt`) is called as `model(x0, x1, dt)`: x0 and x1 (B, 3, H, W) RGB in
[0, 1], dt (B, 1) the time between them, and returns the frame at dt (B, 3, H, W). Its feature pyramid has
7 levels, so the sides are padded to multiples of 64. FILM is trained on the middle frame, so several
in-between frames are made by recursion: each new frame is made from the two nearest known frames,
taking next the wanted time that sits nearest the middle of its interval.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vace.pipelines.outputs.interpolation.warp import pad_to_multiple

PAD_MULTIPLE = 64


def recursion_order(times: list[float]) -> list[tuple[float, float, float]]:
    """(t, left, right) in the order to make them: each t from the nearest known times left and right of it,
    always taking next the t nearest the middle of its interval. Known at the start: 0 and 1."""
    known = [0.0, 1.0]
    remaining = sorted(times)
    order = []
    while remaining:
        def placement(t: float) -> tuple[float, float, float]:
            left = max(k for k in known if k < t)
            right = min(k for k in known if k > t)
            return abs((t - left) / (right - left) - 0.5), left, right

        best = min(remaining, key=lambda t: placement(t)[0])
        _, left, right = placement(best)
        order.append((best, left, right))
        known.append(best)
        remaining.remove(best)
    return order


class FilmInterpolator:
    """A loaded FILM TorchScript module."""

    name = "film"

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.path = Path(path)
        self.model = torch.jit.load(str(self.path), map_location="cpu").eval().float().to(device)
        self.device = device

    @torch.inference_mode()
    def between(self, image0: torch.Tensor, image1: torch.Tensor, times: list[float]) -> list[torch.Tensor]:
        """(1, 3, H, W) frames in [0, 1] -> the frames at each time in `times` (0 < t < 1)."""
        height, width = image0.shape[2:]
        frames = {0.0: pad_to_multiple(image0, PAD_MULTIPLE), 1.0: pad_to_multiple(image1, PAD_MULTIPLE)}
        for t, left, right in recursion_order(times):
            dt = frames[left].new_full((frames[left].shape[0], 1), (t - left) / (right - left))
            frames[t] = self.model(frames[left], frames[right], dt).clamp(0, 1)
        return [frames[t][:, :, :height, :width] for t in times]
