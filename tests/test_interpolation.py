"""Frame interpolation: the warp/blend code against a linear-motion oracle, and RIFE / FILM code paths on tiny
random-weight networks in the published layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vace.pipelines.engine.render import RenderCancelled
from vace.pipelines.fixtures.tiny_interpolators import write_tiny_interpolators
from vace.pipelines.outputs.interpolation import (
    interpolate,
    interpolated_count,
    load_interpolator,
)
from vace.pipelines.outputs.interpolation.film import recursion_order
from vace.pipelines.outputs.interpolation.rife import IFNet, config_from_state_dict
from vace.pipelines.outputs.interpolation.warp import backward_warp, synthesize

SIDE, SQUARE, SPEED = 32, 6, 8  # a 6-px white square moving 8 px right per frame on black


def square_frame(x: int, y: int = 12) -> np.ndarray:
    frame = np.zeros((SIDE, SIDE + 16, 3), np.float32)
    frame[y:y + SQUARE, x:x + SQUARE] = 1.0
    return frame


def square_left(frame: np.ndarray) -> float:
    """x of the square's left edge (from the column profile's centre of mass)."""
    cols = frame[..., 0].sum(axis=0)
    return float((cols * np.arange(len(cols))).sum() / cols.sum() - (SQUARE - 1) / 2)


class LinearMotionOracle:
    """An interpolator that knows the motion: constant velocity SPEED px/frame along x."""

    name = "oracle"

    def between(self, image0, image1, times):
        out = []
        for t in times:
            velocity = torch.zeros_like(image0[:, :2])
            velocity[:, 0] = SPEED
            out.append(synthesize(image0, image1, -t * velocity, (1 - t) * velocity, torch.tensor(1 - t)))
        return out


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1)[None]


def test_backward_warp_reads_at_p_plus_flow():
    image = to_tensor(square_frame(8))
    flow = torch.zeros(1, 2, *image.shape[2:])
    flow[:, 0] = -4.0  # each pixel reads 4 px to its left: the content moves 4 px right
    moved = backward_warp(image, flow)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(moved, square_frame(12), atol=1e-6)


def test_oracle_midpoint_puts_the_square_halfway():
    mid = LinearMotionOracle().between(to_tensor(square_frame(8)), to_tensor(square_frame(16)), [0.5])[0]
    mid = mid[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(mid, square_frame(12), atol=1e-6)
    assert square_left(mid) == pytest.approx(12.0)


def test_interpolate_with_oracle_places_every_frame_on_the_line():
    frames = np.stack([square_frame(4), square_frame(4 + SPEED), square_frame(4 + 2 * SPEED)])
    seen = []
    out = interpolate(frames, 3, LinearMotionOracle(), progress=lambda i, n: seen.append((i, n)))
    assert out.shape == (interpolated_count(3, 3), *frames.shape[1:]) == (9, SIDE, SIDE + 16, 3)
    assert [square_left(f) for f in out] == pytest.approx([4 + 2 * i for i in range(9)], abs=1e-4)
    np.testing.assert_array_equal(out[::4], frames)  # the rendered frames are kept as they were
    assert seen == [(1, 2), (2, 2)]


def test_interpolate_stops_between_pairs_when_cancelled():
    frames = np.stack([square_frame(x) for x in (0, 8, 16, 24)])
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(RenderCancelled, match="2/3"):
        interpolate(frames, 1, LinearMotionOracle(), cancel=cancel)


def test_zero_frames_to_insert_is_the_identity():
    frames = np.stack([square_frame(0), square_frame(8)])
    assert interpolate(frames, 0, LinearMotionOracle()) is frames


def test_ifnet_has_the_published_4_25_shapes():
    shapes = {k: tuple(v.shape) for k, v in IFNet().state_dict().items()}
    assert shapes["encode.cnn0.weight"] == (16, 3, 3, 3)
    assert shapes["encode.cnn3.weight"] == (16, 4, 4, 4)  # ConvTranspose2d: (in, out, k, k)
    assert shapes["block0.conv0.0.0.weight"] == (96, 15, 3, 3)
    assert shapes["block1.conv0.0.0.weight"] == (64, 28, 3, 3)
    assert shapes["block4.convblock.7.beta"] == (1, 32, 1, 1)
    assert shapes["block0.lastconv.0.weight"] == (192, 52, 4, 4)
    assert not any(k.startswith("block5") for k in shapes)
    assert config_from_state_dict(IFNet().state_dict()) == IFNet().config


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_interpolators(tmp_path_factory.mktemp("interpolators"))


@pytest.mark.parametrize("name", ["rife", "film"])
def test_tiny_networks_run_the_real_code_path(tiny_root: Path, name: str):
    rng = np.random.default_rng(0)
    frames = rng.random((3, 40, 72, 3), dtype=np.float32)  # not multiples of 64: padded and cropped back
    model = load_interpolator(name, tiny_root / name)
    out = interpolate(frames, 2, model)
    assert out.shape == (7, 40, 72, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_array_equal(out[::3], frames)
    for i in range(1, len(out)):
        if i % 3:  # a made frame differs visibly from both neighbours
            assert np.abs(out[i] - out[i - 1]).mean() > 2 / 255
            assert np.abs(out[i] - out[i + 1]).mean() > 2 / 255


def test_tiny_rife_is_a_practical_rife_checkpoint(tiny_root: Path):
    state = torch.load(tiny_root / "rife" / "flownet.pkl", weights_only=True)
    assert all(k.startswith("module.") for k in state)
    assert {k.removeprefix("module.") for k in state} == set(IFNet(config_from_state_dict(
        {k.removeprefix("module."): v for k, v in state.items()})).state_dict())


def test_missing_weights_name_the_folder_and_the_fetch(tmp_path: Path):
    with pytest.raises(FileNotFoundError) as err:
        load_interpolator("film", tmp_path / "film")
    assert f"expected film_net_fp32.pt in {tmp_path / 'film'}" in str(err.value)
    assert "releases/download/v1.0.0/film_net_fp32.pt" in str(err.value)


def test_film_recursion_makes_each_frame_from_its_nearest_known_frames():
    assert recursion_order([0.25, 0.5, 0.75]) == [(0.5, 0.0, 1.0), (0.25, 0.0, 0.5), (0.75, 0.5, 1.0)]
    (first, *bounds), second = recursion_order([1 / 3, 2 / 3])
    assert bounds == [0.0, 1.0] and first in (1 / 3, 2 / 3)
    assert second == ((1 / 3, 0.0, first) if first > 0.5 else (2 / 3, first, 1.0))
