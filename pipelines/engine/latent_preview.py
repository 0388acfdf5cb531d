"""Live previews of a job while it denoises: a fixed linear latent -> RGB projection, no VAE decode.

The Wan 2.1 VAE (every VACE model, the tiny test models included) has 16 latent channels. Its published
per-channel RGB factors (ComfyUI's `Wan21` latent format) map a normalised latent -- the space the
diffusers pipeline denoises in, (z - mean) / std -- to RGB in about [-1, 1]. A VAE with another channel
count gets a plain projection instead: channel c feeds colour c % 3, each colour the mean of its channels.

Previews show the clean video the current step points at: with flow matching x_t = (1 - s) x0 + s noise,
so the secant through two consecutive latents gives x0 exactly for an Euler step (closely for multistep
solvers) and a much clearer picture than the noisy x_t at high sigma.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

WAN21_RGB_FACTORS = np.array([
    [-0.1299, -0.1692, 0.2932],
    [0.0671, 0.0406, 0.0442],
    [0.3568, 0.2548, 0.1747],
    [0.0372, 0.2344, 0.1420],
    [0.0313, 0.0189, -0.0328],
    [0.0296, -0.0956, -0.0665],
    [-0.3477, -0.4059, -0.2925],
    [0.0166, 0.1902, 0.1975],
    [-0.0412, 0.0267, -0.1364],
    [-0.1293, 0.0740, 0.1636],
    [0.0680, 0.3019, 0.1128],
    [0.0032, 0.0581, 0.0639],
    [-0.1251, 0.0927, 0.1699],
    [0.0060, -0.0633, 0.0005],
    [0.3477, 0.2275, 0.2950],
    [0.1984, 0.0913, 0.1861],
], dtype=np.float32)
WAN21_RGB_BIAS = np.array([-0.1835, -0.0868, -0.3360], dtype=np.float32)

PREVIEWS_PER_JOB = 10  # about this many previews per job, whatever its step count
MAX_PREVIEW_FRAMES = 4  # frames shown side by side, evenly spaced over the video
FRAME_HEIGHT = 96  # pixels of each preview frame (the latent is 1/8 of the video's size)
JPEG_QUALITY = 80


def rgb_projection(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(channels, 3) factors and (3,) bias taking a normalised latent pixel to RGB in about [-1, 1]."""
    if channels == WAN21_RGB_FACTORS.shape[0]:
        return WAN21_RGB_FACTORS, WAN21_RGB_BIAS
    if channels < 1:
        raise ValueError(f"a latent has at least one channel, not {channels}")
    factors = np.zeros((channels, 3), dtype=np.float32)
    colour = np.arange(channels) % 3
    factors[np.arange(channels), colour] = 1.0
    counts = factors.sum(axis=0)
    factors /= np.where(counts > 0, counts, 1.0)  # fewer than 3 channels: the missing colours stay 0
    return factors, np.zeros(3, dtype=np.float32)


def latent_to_rgb(latent: np.ndarray, factors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(C, T, H, W) normalised latent -> (T, H, W, 3) uint8."""
    rgb = np.einsum("cthw,ck->thwk", latent.astype(np.float32), factors) + bias
    return np.round((np.clip(rgb, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def denoised_estimate(current: np.ndarray, previous: np.ndarray, sigma_before: float, sigma_after: float) -> np.ndarray:
    """x0 from two latents on the flow-matching line x = (1 - s) x0 + s noise, at noise levels before/after."""
    if abs(sigma_after - sigma_before) < 1e-8:
        return current
    velocity = (current - previous) / (sigma_after - sigma_before)
    return current - sigma_after * velocity


def preview_every(total_steps: int) -> int:
    """Steps between two previews: about PREVIEWS_PER_JOB per job, every step for short jobs."""
    return max(1, round(total_steps / PREVIEWS_PER_JOB))


def preview_due(step: int, total_steps: int) -> bool:
    """Whether step `step` (1-based, after it ran) gets a preview; the last step always does."""
    return step == total_steps or step % preview_every(total_steps) == 0


@dataclass
class Preview:
    """One preview image: a JPEG strip of up to MAX_PREVIEW_FRAMES frames after denoising step `step`."""

    step: int
    total: int
    jpeg: bytes
    width: int
    height: int

    def data_uri(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode()

    def to_dict(self) -> dict[str, Any]:
        """What the store keeps and the API sends."""
        return {"step": self.step, "total": self.total, "image": self.data_uri(), "width": self.width,
                "height": self.height}


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, maybe bf16 on a GPU: only the few selected frames cross over
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def strip_image(frames: np.ndarray, frame_height: int = FRAME_HEIGHT) -> tuple[bytes, int, int]:
    """(T, h, w, 3) uint8 -> a JPEG of the frames side by side, each scaled to `frame_height` rows."""
    t, h, w, _ = frames.shape
    width = max(1, round(w * frame_height / h))
    strip = Image.new("RGB", (width * t, frame_height))
    for i, frame in enumerate(frames):
        strip.paste(Image.fromarray(frame).resize((width, frame_height), Image.BILINEAR), (i * width, 0))
    out = io.BytesIO()
    strip.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), strip.width, strip.height


class LatentPreviewer:
    """Called after every denoising step with the pipeline's latents; returns a Preview on the due steps.

    `skip_frames` leading latent frames are the reference images (not part of the video) and are left out.
    """

    def __init__(self, channels: int, total_steps: int, skip_frames: int = 0,
                 max_frames: int = MAX_PREVIEW_FRAMES, frame_height: int = FRAME_HEIGHT):
        self.factors, self.bias = rgb_projection(channels)
        self.total = total_steps
        self.skip = skip_frames
        self.max_frames = max_frames
        self.frame_height = frame_height
        self._previous: np.ndarray | None = None  # the selected frames before the last step

    def _frames(self, latents: Any) -> np.ndarray:
        """The selected video frames of a (1, C, T, H, W) latent as (C, t, H, W) float32."""
        count = latents.shape[2] - self.skip
        if count < 1:
            raise ValueError(f"the latent has {latents.shape[2]} frames, {self.skip} of them reference frames")
        picked = np.unique(np.linspace(0, count - 1, min(count, self.max_frames)).round().astype(int)) + self.skip
        return _to_numpy(latents[0][:, picked.tolist()])

    def _denoised(self, current: np.ndarray, step: int, sigmas: Any) -> np.ndarray:
        if self._previous is None or sigmas is None or step >= len(sigmas):
            return current
        return denoised_estimate(current, self._previous, float(sigmas[step - 1]), float(sigmas[step]))

    def __call__(self, step: int, latents: Any, sigmas: Any = None) -> Preview | None:
        """`step` is 1-based (the step that just ran); `latents` the pipeline's (1, C, T, H, W) latents;
        `sigmas` the scheduler's noise levels (steps + 1 values; None previews x_t as it is)."""
        due, before_due = preview_due(step, self.total), step < self.total and preview_due(step + 1, self.total)
        if not (due or before_due):
            self._previous = None
            return None
        current = self._frames(latents)
        preview = None
        if due:
            rgb = latent_to_rgb(self._denoised(current, step, sigmas), self.factors, self.bias)
            jpeg, width, height = strip_image(rgb, self.frame_height)
            preview = Preview(step, self.total, jpeg, width, height)
        self._previous = current if before_due else None
        return preview
