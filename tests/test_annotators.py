"""Annotators: real inference code on tiny random-weight models built in the test, real computations for the
weight-free ones, the documented error when weights are missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import moving_square_frames
from vace.pipelines.conditioning import annotators
from vace.pipelines.conditioning.annotators import AnnotatorEnv
from vace.pipelines.conditioning.annotators import dwpose as dw
from vace.pipelines.conditioning.annotators.flow import FarnebackFlow, flow_to_image, torchvision_problem
from vace.pipelines.conditioning.annotators.simple import GrayAnnotator, interpolate_boxes
from vace.pipelines.fixtures.tiny_annotators import write_tiny_annotators
from vace.pipelines.job.request import RequestError
from vace.weights import annotators as weights

N, H, W = 3, 40, 56


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("annotators")
    write_tiny_annotators(root)
    return root


@pytest.fixture()
def env(root: Path) -> AnnotatorEnv:
    return AnnotatorEnv(root=root, device="cpu")


def frames(n: int = N, w: int = W, h: int = H) -> np.ndarray:
    return moving_square_frames(n, w, h, size=12, step=3).astype(np.float32) / 255.0


def run(name: str, env: AnnotatorEnv, clip: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    out = annotators.load(name, env)(clip, lambda done, total: calls.append((done, total)))
    return out, calls


@pytest.mark.parametrize("name", ["depth", "pose", "face", "lineart"])
def test_model_annotators_keep_count_and_size(env, name):
    clip = frames()
    out, calls = run(name, env, clip)
    assert out.shape == clip.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert calls[-1] == (N, N)


def test_depth_is_min_max_per_frame_on_three_equal_channels(env):
    out, _ = run("depth", env, frames())
    for frame in out:
        assert frame.min() == 0.0 and frame.max() == 1.0
        assert np.array_equal(frame[..., 0], frame[..., 1]) and np.array_equal(frame[..., 1], frame[..., 2])


def test_lineart_frames_are_gray_8bit_levels(env):
    out, _ = run("lineart", env, frames())
    assert np.array_equal(out[..., 0], out[..., 2])
    assert np.allclose(out * 255, np.round(out * 255), atol=1e-4)


def test_sam2_tracks_first_frame_mask(env):
    clip = frames(4)
    first = np.zeros((H, W), np.float32)
    first[14:26, 4:16] = 1
    calls: list[tuple[int, int]] = []
    masks = annotators.load("sam2", env).track(clip, first, lambda d, t: calls.append((d, t)))
    assert masks.shape == (4, H, W) and set(np.unique(masks)) <= {0.0, 1.0}
    assert np.array_equal(masks[0], first) and calls[-1] == (4, 4)


@pytest.mark.skipif(torchvision_problem() is not None, reason="torchvision (RAFT) not importable here")
def test_raft_flow_on_tiny_model(env):
    out, calls = run("raft", env, frames())
    assert out.shape == (N, H, W, 3) and np.array_equal(out[0], out[1]) and calls[-1] == (N - 1, N - 1)


@pytest.mark.skipif(torchvision_problem() is None, reason="torchvision importable here")
def test_raft_without_torchvision_names_the_alternative(env):
    with pytest.raises(RequestError) as err:
        annotators.require("raft", env)
    assert "torchvision" in str(err.value) and "farneback" in str(err.value)
    assert "vace-server[annotators]" in str(err.value)  # which extra to install


@pytest.mark.parametrize("name", ["depth", "pose", "face", "lineart", "sam2", "raft"])
def test_missing_weights_name_annotator_directory_and_source(tmp_path, name):
    if name == "raft" and torchvision_problem():
        pytest.skip("without torchvision RAFT fails on that first (tested above)")
    with pytest.raises(RequestError) as err:
        annotators.load(name, AnnotatorEnv(root=tmp_path, device="cpu"))
    entry = weights.ANNOTATOR_WEIGHTS[annotators.WEIGHTS_OF[name]]
    message = str(err.value)
    assert err.value.field == "task_options"
    assert f"annotator {entry.name!r}" in message and str(tmp_path / entry.dirname) in message
    assert "connected machine" in message and entry.files[0] in message


def test_annotators_root_resolution(tmp_path):
    assert weights.annotators_root(tmp_path / "models" / "Wan2.1-VACE-14B") == (tmp_path / "models" / "annotators")
    assert weights.annotators_root(tmp_path / "models" / "x", tmp_path / "elsewhere") == tmp_path / "elsewhere"


# --- DWPose drawing convention ------------------------------------------------------------------------------------

def one_person(points: dict[int, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """134 OpenPose-ordered points, normalised; only the given ones visible."""
    keypoints = np.zeros((1, 134, 2))
    scores = np.zeros((1, 134))
    for index, (x, y) in points.items():
        keypoints[0, index] = (x, y)
        scores[0, index] = 0.9
    return keypoints, scores


def test_pose_drawing_joint_colours_and_face_points():
    keypoints, scores = one_person({0: (0.25, 0.5), 1: (0.75, 0.5), 24: (0.5, 0.25)})
    canvas = dw.draw_pose(keypoints, scores, 64, 64, body=True, face=True)
    assert tuple(canvas[32, 16]) == (255, 0, 0)  # joint 0 (nose) in the drawing's colour list order
    assert tuple(canvas[32, 48]) == (255, 85, 0)  # joint 1 (neck)
    assert tuple(canvas[32, 32]) == tuple(int(c * 0.6) for c in dw.COLORS[12])  # limb 12 (neck-nose), dimmed
    assert tuple(canvas[16, 32]) == (255, 255, 255)  # face point
    face_only = dw.draw_pose(keypoints, scores, 64, 64, body=False, face=True)
    assert tuple(face_only[16, 32]) == (255, 255, 255) and face_only[32, 16].sum() == 0


def test_dwpose_output_swaps_channels_like_the_official_annotator(root, monkeypatch):
    keypoints = np.zeros((1, 133, 2))
    keypoints[0, 0] = (32, 32)  # COCO nose -> OpenPose joint 0
    scores = np.zeros((1, 133))
    scores[0, 0] = 0.9
    monkeypatch.setattr(dw, "estimate_keypoints", lambda session, boxes, image: (keypoints.copy(), scores.copy()))
    model = dw.DWPose(root / "dwpose", "cpu", body=True, face=True)
    model.resolution = 64
    out = model.frame(np.zeros((64, 64, 3), np.uint8))
    assert tuple(out[32, 32]) == (0, 0, 255)  # drawn as (255, 0, 0), then RGB/BGR swapped


def test_openpose_reorder_inserts_neck():
    keypoints = np.zeros((1, 133, 2))
    scores = np.full((1, 133), 0.9)
    keypoints[0, 5], keypoints[0, 6] = (10, 20), (30, 40)  # COCO shoulders (left, right)
    points, vis = dw.to_openpose(keypoints, scores)
    assert points.shape == (1, 134, 2)
    assert np.allclose(points[0, 1], (20, 30))  # neck = mean of shoulders
    assert np.allclose(points[0, 2], (30, 40)) and np.allclose(points[0, 5], (10, 20))  # R / L shoulder


# --- weight-free --------------------------------------------------------------------------------------------------

def test_gray_equals_luma_formula():
    clip = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    out = GrayAnnotator()(clip)
    luma = 0.299 * clip[..., 0] + 0.587 * clip[..., 1] + 0.114 * clip[..., 2]
    assert np.allclose(out, luma[..., None].repeat(3, -1), atol=1e-6)


def test_farneback_flow_of_square_moving_right_points_right():
    clip = np.zeros((2, 48, 64, 3), np.float32)
    clip[0, 16:32, 16:32] = 1.0
    clip[1, 16:32, 19:35] = 1.0
    flow = FarnebackFlow().flows(clip)[0]
    u, v = flow[18:30, 20:32, 0].mean(), flow[18:30, 20:32, 1].mean()
    assert u > 1.0 and abs(v) < 0.5 * u
    out = FarnebackFlow()(clip)
    assert out.shape == clip.shape and np.array_equal(out[0], out[1])


def test_flow_colours_follow_the_middlebury_wheel():
    right = np.zeros((2, 2, 2), np.float32)
    right[..., 0] = 1.0
    left = -right
    assert np.abs(flow_to_image(right)[0, 0].astype(int) - (255, 0, 0)).max() <= 1  # wheel start: red
    assert np.abs(flow_to_image(left)[0, 0].astype(int) - (0, 208, 255)).max() <= 1
    still = flow_to_image(np.zeros((2, 2, 2), np.float32))
    assert np.all(still == 255)  # no motion = white


def test_canny_finds_square_edges():
    clip = np.zeros((1, 32, 32, 3), np.float32)
    clip[0, 8:24, 8:24] = 1.0
    out = annotators.load("canny", AnnotatorEnv())(clip)
    assert out[0, 16, 7:9].max() == 1.0 and out[0, 16, 14:18].max() == 0.0 and out[0, 2, 2].max() == 0.0


def test_layout_box_interpolation_truncates_like_official():
    boxes = interpolate_boxes([[0, 0, 10, 10], [9, 3, 19, 13]], 4)
    assert boxes.tolist() == [[0, 0, 10, 10], [3, 1, 13, 11], [6, 2, 16, 12], [9, 3, 19, 13]]


def test_face_shares_the_loaded_pose_networks(env):
    """`face` is DWPose drawing the face points only: the ONNX sessions are the ones `pose` loaded."""
    pose, face = annotators.load("pose", env), annotators.load("face", env)
    assert face.detector is pose.detector and face.pose is pose.pose
    assert (pose.name, pose.body, face.name, face.body) == ("pose", True, "face", False)
