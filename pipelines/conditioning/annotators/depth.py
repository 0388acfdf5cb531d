"""Depth control frames: Depth Anything V2 (transformers), min-max normalised per frame, 3 channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vace.pipelines.conditioning.annotators.base import ProgressFn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def network_size(height: int, width: int, target: int, multiple: int) -> tuple[int, int]:
    """Keep aspect, shorter side at least `target`, both sides multiples of `multiple` (DPT 'lower_bound')."""
    scale = max(target / height, target / width)
    return (max(multiple, int(round(height * scale / multiple)) * multiple),
            max(multiple, int(round(width * scale / multiple)) * multiple))


def minmax(depth: np.ndarray) -> np.ndarray:
    """Scale one depth map to [0, 1]; a constant map becomes all zeros."""
    lo, hi = float(depth.min()), float(depth.max())
    return np.zeros_like(depth) if hi - lo < 1e-12 else (depth - lo) / (hi - lo)


class DepthAnythingV2:
    name = "depth"

    def __init__(self, folder: Path, device: str = "cpu", input_size: int = 518):
        import torch  # torch loads only where tensors are used (the API process never needs it)
        import transformers  # transformers loads only where a model is built
        from transformers import DepthAnythingForDepthEstimation  # transformers loads only where a model is built

        transformers.utils.logging.disable_progress_bar()
        self.device = device
        self.model = DepthAnythingForDepthEstimation.from_pretrained(str(folder), local_files_only=True).to(device)
        self.model.eval()
        self.patch = int(self.model.config.patch_size)
        self.input_size = input_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __call__(self, frames: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        import torch  # torch loads only where tensors are used (the API process never needs it)
        import torch.nn.functional as F  # torch loads only where tensors are used (the API process never needs it)

        n, h, w, _ = frames.shape
        nh, nw = network_size(h, w, self.input_size, self.patch)
        out = np.empty((n, h, w, 3), dtype=np.float32)
        with torch.inference_mode():
            for i, frame in enumerate(frames):
                x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
                x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False).clamp(0, 1)
                x = ((x - self.mean) / self.std).to(self.device)
                depth = self.model(pixel_values=x).predicted_depth[:, None].float()
                depth = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                out[i] = minmax(depth.cpu().numpy())[..., None]
                if progress:
                    progress(i + 1, n)
        return out
