"""The Wan VAE as the renderer loads it: AutoencoderKLWan that encodes an all-zero video once per shape.

VACE conditions on two encoded halves of the control video (the kept and the regenerated part). Where a job has
no source video (text-to-video, reference-only) both halves are all zeros, and a control task (depth, pose, ...)
keeps nothing, so its kept half is all zeros too. The latents of zeros depend only on the shape, so each shape is
encoded once per loaded model: text-to-video saves one full VAE encode on its first job and both on later ones.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput

ZERO_SHAPES_KEPT = 4  # a few sizes in use at once; 81 frames at 832x480 keep 17 MB each


class WanVAE(AutoencoderKLWan):
    """AutoencoderKLWan whose `encode` of an all-zero input is computed once per (shape, dtype, device, tiling)."""

    def zero_encodes(self) -> OrderedDict[tuple, torch.Tensor]:
        """The moments (mean and log-variance) of encoded zeros, most recently used last."""
        # made on first use: from_pretrained reads the config through AutoencoderKLWan.__init__'s own signature
        if "_zero_moments" not in self.__dict__:
            self._zero_moments: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        return self._zero_moments

    def _tiling(self) -> tuple[int, int, int, int] | None:
        """The tiles an encode is cut into (tiled encodes differ from whole ones at the seams); None untiled."""
        if not self.use_tiling:
            return None
        return (self.tile_sample_min_height, self.tile_sample_min_width, self.tile_sample_stride_height,
                self.tile_sample_stride_width)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
        if bool(x.any()):
            return super().encode(x, return_dict=return_dict)
        cache = self.zero_encodes()
        key = (tuple(x.shape), x.dtype, str(x.device), self._tiling())
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = super().encode(x).latent_dist.parameters
            while len(cache) > ZERO_SHAPES_KEPT:
                cache.popitem(last=False)
        posterior = DiagonalGaussianDistribution(cache[key].clone())
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)
