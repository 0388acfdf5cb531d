"""End to end per task family on the tiny model (and the tiny annotators beside it): an mp4 of the requested shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import mask_frames_box, moving_square_frames, write_video
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.media.codec import probe_video

W, H, N = 32, 32, 5


@pytest.fixture(autouse=True)
def annotators_beside_model(monkeypatch):
    monkeypatch.delenv("VACE_ANNOTATORS_DIR", raising=False)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("task-media")
    mask = np.zeros((H, W), np.uint8)
    mask[8:20, 4:16] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.new("RGB", (24, 24), (255, 200, 0)).save(d / "ref.png")
    Image.new("RGB", (W, H), (0, 128, 255)).save(d / "first.png")
    Image.new("RGB", (W, H), (255, 0, 128)).save(d / "last.png")
    return {
        "video": str(write_video(d / "clip.mp4", moving_square_frames(N, W, H, size=8))),
        "wide": str(write_video(d / "wide.mp4", moving_square_frames(N, 64, 32, size=8))),
        "long": str(write_video(d / "long.mp4", moving_square_frames(11, W, H, size=8), fps=24)),
        "mask_video": str(write_video(d / "mask.mp4", mask_frames_box(N, W, H, (4, 8, 16, 20)))),
        "mask": str(d / "mask.png"), "ref": str(d / "ref.png"), "first": str(d / "first.png"),
        "last": str(d / "last.png"),
    }


def request(media: dict[str, str], task: str, width: int = W, height: int = H, **kw) -> GenerationRequest:
    refs = kw.pop("refs", False)
    return GenerationRequest(prompt="a fox", width=width, height=height, num_frames=N, steps=2, seed=3, task=task,
                             reference_images=[media["ref"]] if refs else [], **kw)


CASES = {
    "firstlastframe": lambda m: request(m, "firstlastframe", first_frame=m["first"], last_frame=m["last"]),
    "extension": lambda m: request(m, "extension", video=m["video"], task_options={"clip_frames": 2}),
    "inpainting-video-mask": lambda m: request(m, "inpainting", video=m["video"], mask=m["mask_video"]),
    "inpainting-tracked": lambda m: request(m, "inpainting", video=m["video"], mask=m["mask"],
                                            task_options={"mask_tracking": "sam2"}),
    "outpainting": lambda m: request(m, "outpainting", 64, 32, video=m["video"],
                                     task_options={"expand_left": True, "expand_right": True, "expand_ratio": 0.5}),
    "reframe": lambda m: request(m, "reframe", video=m["wide"], task_options={"zoom_factor": 0.5}),
    "depth": lambda m: request(m, "depth", video=m["video"]),
    "pose": lambda m: request(m, "pose", video=m["video"]),
    "face": lambda m: request(m, "face", video=m["video"]),
    "flow": lambda m: request(m, "flow", video=m["video"], task_options={"annotator": "farneback"}),
    "scribble": lambda m: request(m, "scribble", video=m["video"]),
    "gray": lambda m: request(m, "gray", video=m["video"]),
    "layout": lambda m: request(m, "layout", task_options={"boxes": [[2, 2, 10, 10], [20, 20, 30, 30]]}),
    "move-anything": lambda m: request(m, "move-anything", first_frame=m["first"],
                                       task_options={"boxes": [[2, 2, 10, 10], [20, 20, 30, 30]]}),
    "swap-anything": lambda m: request(m, "swap-anything", video=m["video"], mask=m["mask"], refs=True),
    "animate-anything": lambda m: request(m, "animate-anything", video=m["video"], refs=True),
    "expand-anything": lambda m: request(m, "expand-anything", 64, 32, first_frame=m["first"], refs=True,
                                         task_options={"expand_left": True, "expand_right": True,
                                                       "expand_ratio": 0.5}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_task_renders_mp4_of_requested_shape(renderer, media, tmp_path, case):
    req = CASES[case](media)
    out = tmp_path / f"{case}.mp4"
    result = renderer.render(req, output_path=out)
    probe = probe_video(out)
    assert (probe["num_frames"], probe["width"], probe["height"]) == (N, req.width, req.height)
    assert result.frames.shape == (N, req.height, req.width, 3)


def test_match_input_frames_and_fps_end_to_end(renderer, media, tmp_path):
    req = request(media, "gray", video=media["long"],
                  task_options={"match_input_num_frames": True, "match_input_frames_per_second": True})
    result = renderer.render(req, output_path=tmp_path / "match.mp4")
    probe = probe_video(result.path)
    assert probe["num_frames"] == 9 and result.num_frames == 9
    assert result.fps == 24.0 and abs(probe["fps"] - 24.0) < 0.01


def test_cli_generate_with_task_flags(tiny_model_dir, media, tmp_path):
    out = tmp_path / "cli.mp4"
    cmd = [sys.executable, "-m", "vace.server.cli", "generate", "--model", "tiny", "--device", "cpu", "--out", str(out),
           "--prompt", "a fox", "--size", "64*32", "--frames", "5", "--steps", "1", "--seed", "1",
           "--video", media["video"], "--task", "outpainting", "--expand", "left", "--expand", "right",
           "--expand-ratio", "0.5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (probe_video(out)["width"], probe_video(out)["height"]) == (64, 32)
    bad = subprocess.run(cmd[:-1] + ["-1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--expand-ratio" in bad.stderr  # the flag typed, not the internal field


def test_annotators_root_is_beside_the_tiny_model(tiny_model_dir: Path):
    root = tiny_model_dir.parent / "annotators"
    for folder in ("depth-anything-v2", "dwpose", "scribble", "sam2.1-hiera"):
        assert (root / folder).is_dir()
