"""Flow-based frame synthesis shared by every interpolator: backward warping, blending, padding.

Flows are in pixels, (B, 2, H, W) with x then y. `backward_warp(image, flow)` reads `image` at
`p + flow(p)`: to place frame 0 at time t, warp it with the flow from t to 0 (for constant velocity v per
frame interval that is -t * v); frame 1 with the flow from t to 1 ((1 - t) * v). The functions are plain
tensor code so they also compile into TorchScript interpolators.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, H, W) pixel coordinates (x, y) of every position."""
    ys = torch.arange(height, dtype=like.dtype, device=like.device).view(1, 1, height, 1).expand(1, 1, height, width)
    xs = torch.arange(width, dtype=like.dtype, device=like.device).view(1, 1, 1, width).expand(1, 1, height, width)
    return torch.cat([xs, ys], 1)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `image` (B, C, H, W) at p + flow(p), bilinear, edge pixels repeated outside the frame."""
    height, width = image.shape[2], image.shape[3]
    source = pixel_grid(height, width, flow) + flow
    # grid_sample with align_corners=True maps -1 / +1 to the centres of the first / last pixel.
    gx = source[:, 0] * (2.0 / max(width - 1, 1)) - 1.0
    gy = source[:, 1] * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def blend(warped0: torch.Tensor, warped1: torch.Tensor, weight0: torch.Tensor) -> torch.Tensor:
    """weight0 * warped0 + (1 - weight0) * warped1; weight0 broadcasts (a (B, 1, H, W) mask or a scalar)."""
    return warped0 * weight0 + warped1 * (1.0 - weight0)


def synthesize(image0: torch.Tensor, image1: torch.Tensor, flow_t0: torch.Tensor, flow_t1: torch.Tensor,
               weight0: torch.Tensor) -> torch.Tensor:
    """The frame at time t from both neighbours warped to t (flows from t to each) and blended."""
    return blend(backward_warp(image0, flow_t0), backward_warp(image1, flow_t1), weight0)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right so both sides are multiples of `multiple` (crop back with [..., :h, :w])."""
    height, width = image.shape[2], image.shape[3]
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    return F.pad(image, (0, pad_w, 0, pad_h))
