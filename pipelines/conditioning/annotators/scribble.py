"""Scribble control frames: the VACE line-art (contour) generator, or Canny edges as a named weight-free choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vace.pipelines.conditioning.annotators.base import ProgressFn, to_uint8


def _residual_block(channels: int):
    import torch.nn as nn  # torch loads only where tensors are used (the API process never needs it)

    return nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(inplace=True),
        nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
    )


def ContourInference(base_channels: int = 64, n_residual_blocks: int = 3, input_nc: int = 3, output_nc: int = 1):
    """The informative-drawings generator VACE's ScribbleAnnotator loads (same module names and state-dict keys;
    `base_channels` is 64 in the released weights and smaller only in tiny test models)."""
    import torch  # torch loads only where tensors are used (the API process never needs it)
    import torch.nn as nn  # torch loads only where tensors are used (the API process never needs it)

    class Residual(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.conv_block = _residual_block(channels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv_block(x)

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            c = base_channels
            self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(input_nc, c, 7), nn.InstanceNorm2d(c),
                                        nn.ReLU(inplace=True))
            self.model1 = nn.Sequential(
                nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(inplace=True),
                nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(4 * c), nn.ReLU(inplace=True))
            self.model2 = nn.Sequential(*[Residual(4 * c) for _ in range(n_residual_blocks)])
            self.model3 = nn.Sequential(
                nn.ConvTranspose2d(4 * c, 2 * c, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(2 * c),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(2 * c, c, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(c),
                nn.ReLU(inplace=True))
            self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(c, output_nc, 7), nn.Sigmoid())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))

    return Generator()


class LineArt:
    name = "lineart"

    def __init__(self, folder: Path, device: str = "cpu"):
        import torch  # torch loads only where tensors are used (the API process never needs it)

        config = {"base_channels": 64, "n_residual_blocks": 3}
        if (folder / "config.json").is_file():
            config.update(json.loads((folder / "config.json").read_text()))
        self.device = device
        self.model = ContourInference(**config)
        state = torch.load(folder / "netG_A_latest.pth", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval().requires_grad_(False).to(device)

    def __call__(self, frames: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        import torch  # torch loads only where tensors are used (the API process never needs it)

        n, h, w, _ = frames.shape
        out = np.empty_like(frames, dtype=np.float32)
        with torch.inference_mode():
            for i, frame in enumerate(frames):
                x = torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)).permute(2, 0, 1)[None]
                # The generator halves twice and doubles twice: pad to a multiple of 4, crop back.
                ph, pw = (-h) % 4, (-w) % 4
                if ph or pw:
                    x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
                y = self.model(x.to(self.device))[0, 0, :h, :w].clamp(0, 1)
                # VACE quantises the contour map to 8 bit before it becomes a control frame.
                out[i] = (np.round(y.cpu().numpy() * 255.0) / 255.0)[..., None]
                if progress:
                    progress(i + 1, n)
        return out


class CannyScribble:
    """Weight-free alternative: OpenCV Canny edges, white lines on black."""

    name = "canny"

    def __init__(self, low: int = 100, high: int = 200):
        self.low, self.high = low, high

    def __call__(self, frames: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        import cv2  # OpenCV loads only where an annotator or decoder needs it

        out = np.empty_like(frames, dtype=np.float32)
        for i, frame in enumerate(to_uint8(frames)):
            edges = cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), self.low, self.high)
            out[i] = (edges.astype(np.float32) / 255.0)[..., None]
            if progress:
                progress(i + 1, len(frames))
        return out
