"""Optical-flow control frames: RAFT (torchvision) or OpenCV Farneback (named weight-free choice),
rendered with the Middlebury colour wheel (RAFT's flow_viz.flow_to_image). N frames in -> N-1 flows;
the first flow frame is repeated so N frames come out, as the official VACE flow annotator does."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from vace.pipelines.conditioning.annotators.base import ProgressFn, to_uint8

RAFT_ITERS = 20
ANNOTATORS_EXTRA = "pip install 'vace-server[annotators]'"
# A small RAFT of the same structure for tiny test bundles (real weights use raft_large's sizes).
TINY_RAFT = {"feature_encoder_layers": [8, 8, 8, 8, 16], "context_encoder_layers": [8, 8, 8, 8, 16],
             "motion_encoder_corr_layers": [16, 8], "motion_encoder_flow_layers": [8, 8],
             "motion_encoder_out_channels": 16, "recurrent_block_hidden_state_size": 8, "flow_head_hidden_size": 16}


@lru_cache(maxsize=1)
def make_colorwheel() -> np.ndarray:
    """The 55-colour Middlebury wheel (RY, YG, GC, CB, BM, MR segments)."""
    segments = [(15, 0, 1, False), (6, 1, 0, True), (4, 1, 2, False), (11, 2, 1, True), (13, 2, 0, False),
                (6, 0, 2, True)]
    wheel, col = np.zeros((55, 3)), 0
    for n, full, ramp, down in segments:
        wheel[col:col + n, full] = 255
        ramp_values = np.floor(255 * np.arange(n) / n)
        wheel[col:col + n, ramp] = 255 - ramp_values if down else ramp_values
        col += n
    return wheel


def flow_to_image(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) flow -> (H, W, 3) uint8 RGB, normalised by the frame's largest motion."""
    u, v = flow[..., 0], flow[..., 1]
    rad_max = float(np.sqrt(u ** 2 + v ** 2).max())
    u, v = u / (rad_max + 1e-5), v / (rad_max + 1e-5)
    wheel = make_colorwheel()
    ncols = wheel.shape[0]
    rad = np.sqrt(u ** 2 + v ** 2)
    fk = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int32)
    k1 = np.where(k0 + 1 == ncols, 0, k0 + 1)
    f = fk - k0
    image = np.zeros((*u.shape, 3), dtype=np.uint8)
    for i in range(3):
        col = (1 - f) * wheel[k0, i] / 255.0 + f * wheel[k1, i] / 255.0
        col = np.where(rad <= 1, 1 - rad * (1 - col), col * 0.75)
        image[..., i] = np.floor(255 * col)
    return image


def flows_to_frames(flows: list[np.ndarray]) -> np.ndarray:
    images = [flow_to_image(f) for f in flows]
    return np.stack(images[:1] + images).astype(np.float32) / 255.0


class FarnebackFlow:
    """Weight-free alternative: OpenCV Farneback dense flow on grayscale frames."""

    name = "farneback"

    def flows(self, frames: np.ndarray, progress: ProgressFn | None = None) -> list[np.ndarray]:
        import cv2  # OpenCV loads only where an annotator or decoder needs it

        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in to_uint8(frames)]
        out = []
        for i in range(len(gray) - 1):
            out.append(cv2.calcOpticalFlowFarneback(gray[i], gray[i + 1], None, pyr_scale=0.5, levels=3,
                                                    winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0))
            if progress:
                progress(i + 1, len(gray) - 1)
        return out

    def __call__(self, frames: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        if len(frames) < 2:
            return np.zeros_like(frames, dtype=np.float32)
        return flows_to_frames(self.flows(frames, progress))


def torchvision_problem() -> str | None:
    """None when torchvision's RAFT imports, else why not and what to do instead."""
    try:
        from torchvision.models.optical_flow import raft  # noqa: F401
    except Exception as exc:  # ImportError, or compiled ops that do not match the installed torch
        return (f"annotator 'raft' needs torchvision built for the installed torch ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'not importable'}); install the annotators extra "
                f"({ANNOTATORS_EXTRA}, from the same package index as torch: a CPU-only torch needs "
                "torchvision's CPU build too), or set task_options.annotator='farneback' for the weight-free "
                "OpenCV Farneback flow")
    return None


def build_raft(config: dict | None = None):
    """torchvision's raft_large architecture, optionally with smaller layer sizes (tiny test models)."""
    import torch.nn as nn  # torch loads only where tensors are used (the API process never needs it)

    # optional: torchvision comes with the annotators extra
    from torchvision.models.optical_flow.raft import ResidualBlock, _raft

    sizes = dict(feature_encoder_layers=(64, 64, 96, 128, 256), context_encoder_layers=(64, 64, 96, 128, 256),
                 corr_block_num_levels=4, corr_block_radius=4, motion_encoder_corr_layers=(256, 192),
                 motion_encoder_flow_layers=(128, 64), motion_encoder_out_channels=128,
                 recurrent_block_hidden_state_size=128, flow_head_hidden_size=256)
    sizes.update({k: tuple(v) if isinstance(v, list) else v for k, v in (config or {}).items()})
    return _raft(weights=None, progress=False, feature_encoder_block=ResidualBlock,
                 feature_encoder_norm_layer=nn.InstanceNorm2d, context_encoder_block=ResidualBlock,
                 context_encoder_norm_layer=nn.BatchNorm2d, recurrent_block_kernel_size=((1, 5), (5, 1)),
                 recurrent_block_padding=((0, 2), (2, 0)), use_mask_predictor=True, **sizes)


class RaftFlow:
    name = "raft"

    def __init__(self, folder: Path, device: str = "cpu", iters: int = RAFT_ITERS):
        import torch  # torch loads only where tensors are used (the API process never needs it)

        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else None
        self.model = build_raft(config)
        self.model.load_state_dict(torch.load(folder / "raft_large.pth", map_location="cpu", weights_only=True))
        self.model.eval().requires_grad_(False).to(device)
        self.device, self.iters = device, iters

    def flows(self, frames: np.ndarray, progress: ProgressFn | None = None) -> list[np.ndarray]:
        import torch  # torch loads only where tensors are used (the API process never needs it)
        import torch.nn.functional as F  # torch loads only where tensors are used (the API process never needs it)

        n, h, w, _ = frames.shape
        ph, pw = (-h) % 8, (-w) % 8
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1
        x = F.pad(x, pad, mode="replicate")
        out = []
        with torch.inference_mode():
            for i in range(n - 1):
                a, b = x[i:i + 1].to(self.device), x[i + 1:i + 2].to(self.device)
                flow = self.model(a, b, num_flow_updates=self.iters)[-1][0]
                flow = flow[:, pad[2]:pad[2] + h, pad[0]:pad[0] + w]
                out.append(flow.permute(1, 2, 0).float().cpu().numpy())
                if progress:
                    progress(i + 1, n - 1)
        return out

    def __call__(self, frames: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        if len(frames) < 2:
            return np.zeros_like(frames, dtype=np.float32)
        return flows_to_frames(self.flows(frames, progress))
