"""Live previews: the latent -> RGB projection, which steps get one, the x0 estimate, the JPEG strip."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from vace.pipelines.engine.latent_preview import (
    WAN21_RGB_BIAS,
    WAN21_RGB_FACTORS,
    LatentPreviewer,
    denoised_estimate,
    latent_to_rgb,
    preview_due,
    rgb_projection,
)


def test_wan_projection_maps_each_channel_to_its_published_colour():
    factors, bias = rgb_projection(16)
    assert factors.shape == (16, 3) and bias.shape == (3,)
    latent = np.zeros((16, 1, 2, 2), dtype=np.float32)
    latent[2] = 1.0  # channel 2 only: RGB = factors[2] + bias, mapped from [-1, 1] to [0, 255]
    expected = np.round((WAN21_RGB_FACTORS[2] + WAN21_RGB_BIAS + 1.0) * 127.5).astype(np.uint8)
    rgb = latent_to_rgb(latent, factors, bias)
    assert rgb.shape == (1, 2, 2, 3) and rgb.dtype == np.uint8
    assert (rgb == expected).all()


def test_other_channel_counts_average_channels_into_colours():
    factors, bias = rgb_projection(5)  # channels 0,3 -> R; 1,4 -> G; 2 -> B
    latent = np.zeros((5, 1, 1, 1), dtype=np.float32)
    latent[0], latent[3], latent[1], latent[2] = 1.0, 0.0, -1.0, 0.5
    assert latent_to_rgb(latent, factors, bias)[0, 0, 0].tolist() == [191, 64, 191]
    assert (bias == 0).all()
    with pytest.raises(ValueError):
        rgb_projection(0)


def test_values_outside_the_range_are_clipped():
    factors, bias = rgb_projection(3)
    latent = np.full((3, 1, 1, 1), 50.0, dtype=np.float32)
    assert latent_to_rgb(latent, factors, bias).tolist() == [[[[255, 255, 255]]]]
    assert latent_to_rgb(-latent, factors, bias).tolist() == [[[[0, 0, 0]]]]


@pytest.mark.parametrize("total, due", [(4, [1, 2, 3, 4]), (30, [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]),
                                        (25, [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25])])
def test_about_ten_previews_per_job_and_always_the_last_step(total: int, due: list[int]):
    assert [s for s in range(1, total + 1) if preview_due(s, total)] == due


def _decode(preview) -> Image.Image:
    assert preview.data_uri().startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(preview.data_uri().split(",", 1)[1])))
    assert image.format == "JPEG" and image.size == (preview.width, preview.height)
    return image


def test_strip_leaves_out_reference_frames_and_spaces_frames_evenly():
    latents = np.zeros((1, 16, 1 + 9, 6, 8), dtype=np.float32)
    latents[0, 14, 0] = 50.0  # the reference frame: white if it were shown
    previewer = LatentPreviewer(16, total_steps=1, skip_frames=1, frame_height=12)
    preview = previewer(1, latents)
    assert (preview.step, preview.total) == (1, 1)
    assert (preview.width, preview.height) == (4 * 16, 12)  # 4 of the 9 frames, each 8x6 scaled to 16x12
    pixels = np.asarray(_decode(preview), dtype=np.float32)
    gray = np.round((WAN21_RGB_BIAS + 1.0) * 127.5)  # a zero latent is the bias colour everywhere
    assert np.abs(pixels - gray).max() <= 6  # JPEG rounding, nothing near white


def test_the_denoised_estimate_recovers_x0_from_two_steps():
    rng = np.random.default_rng(0)
    clean = rng.uniform(-1, 1, (16, 2, 4, 4)).astype(np.float32)
    noise = rng.standard_normal((16, 2, 4, 4)).astype(np.float32)

    def x_t(sigma: float) -> np.ndarray:  # the flow-matching line an Euler step moves along
        return (1 - sigma) * clean + sigma * noise

    np.testing.assert_allclose(denoised_estimate(x_t(0.8), x_t(0.9), 0.9, 0.8), clean, atol=1e-5)
    np.testing.assert_allclose(denoised_estimate(x_t(0.8), x_t(0.8), 0.8, 0.8), x_t(0.8))  # no step: as is


def test_previewer_uses_the_estimate_once_it_has_the_step_before():
    rng = np.random.default_rng(1)
    clean = np.broadcast_to(np.array([0.4, -0.2, 0.1], np.float32)[None, :, None, None, None], (1, 3, 1, 8, 8))
    noise = rng.standard_normal((1, 3, 1, 8, 8)).astype(np.float32)
    sigmas = [1.0, 0.95, 0.9]
    previewer = LatentPreviewer(3, total_steps=2, frame_height=8)
    first = previewer(1, (1 - sigmas[1]) * clean + sigmas[1] * noise, sigmas)
    second = previewer(2, (1 - sigmas[2]) * clean + sigmas[2] * noise, sigmas)
    target = latent_to_rgb(clean[0], *rgb_projection(3))[0].astype(np.float32)
    error = [np.abs(np.asarray(_decode(p), dtype=np.float32) - target).mean() for p in (first, second)]
    assert error[1] < 4 < error[0]  # the noisy x_t first, then the clean picture up to JPEG rounding


def previewer_steps(previewer: LatentPreviewer, latents, sigmas) -> list[int]:
    return [step for step in range(1, 4) if previewer(step, latents, sigmas) is not None]


def test_torch_bfloat16_latents_and_skipped_steps():
    torch = pytest.importorskip("torch")
    latents = torch.zeros((1, 16, 3, 4, 4), dtype=torch.bfloat16)
    sigmas = torch.linspace(1, 0, 31)
    assert previewer_steps(previewer := LatentPreviewer(16, total_steps=30), latents, sigmas) == [3]
    assert previewer._previous is None
    assert previewer(2, latents, sigmas) is None and previewer._previous is not None  # kept for the estimate
    preview = previewer(3, latents, sigmas)
    assert preview.step == 3 and _decode(preview).size == (3 * 96, 96)
    with pytest.raises(ValueError, match="reference frames"):
        LatentPreviewer(16, total_steps=1, skip_frames=3)(1, latents)
