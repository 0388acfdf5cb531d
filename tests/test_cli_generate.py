"""`vace generate` end to end in a subprocess on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.synthetic import moving_square_frames, save_image, solid_image, write_video
from vace.pipelines.media.codec import probe_video


def vace(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vace.server.cli", *args], capture_output=True, text=True, timeout=300)


def test_generate_writes_requested_video_and_reports_seed(tmp_path, tiny_model_dir):
    out = tmp_path / "out.mp4"
    ref = save_image(solid_image(32, 32, (0, 200, 0)), tmp_path / "ref.png")
    src = write_video(tmp_path / "src.mp4", moving_square_frames(13, 64, 48))
    proc = vace("generate", "--model", "tiny", "--prompt", "a fox", "--size", "64*48", "--frames", "12",
                "--fps", "8", "--steps", "2", "--seed", "-1", "--video", str(src), "--ref", str(ref),
                "--offload", "none", "--preset", "none", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["num_frames"] == 13 and 0 <= report["seed"] < 2**32
    assert report["preset"] == "none" and report["transformer_evaluations"] == 4
    assert probe_video(out) == {"num_frames": 13, "width": 64, "height": 48, "fps": 8.0}
    assert "denoising" in proc.stderr  # the progress bar


@pytest.mark.parametrize("flags,expected", [
    (["--size", "60*48"], "error: --size: width must be a multiple of 16, got 60"),
    (["--size", "big"], "error: --size: expected 'WIDTH*HEIGHT', got 'big'"),
    (["--frames", "300"], "error: --frames: must be between 5 and 241, got 300"),
    (["--steps", "0"], "error: --steps: must be between 1 and 100, got 0"),
    (["--seed", "-5"], "error: --seed: must be -1 (random) or between 0 and 4294967295, got -5"),
    (["--sampler", "ddim"], "error: --sampler: must be one of unipc, dpm++, euler, got 'ddim'"),
    (["--preset", "warp"], "error: --preset: unknown preset 'warp'; known: none, low, regular"),
    (["--task", "outpainting", "--expand-ratio", "9"], "error: --expand-ratio: must be between 0.0 and 4.0, got 9.0"),
    (["--task", "warp"], "error: --task: unknown task 'warp'; known: "),
    (["--ref", "a.png"] * 6, "error: --ref: at most 5 reference images are allowed, got 6"),
    (["--mask", "m.png"], "error: --mask: a mask needs a source video"),
    (["--device", "cuda:x"], "error: --device: expected auto | cpu | cuda | cuda:N, got 'cuda:x'"),
    (["--max-render-side", "-1"], "error: --max-render-side: must be 0 (no cap) or a number of pixels, got -1"),
    (["--distill-lora-low-noise", "tiny-style"], "error: --distill-lora-low-noise is the low-noise half of a "
                                                 "distill pair and is used only with --distill-lora"),
])
def test_each_bad_flag_is_one_line_naming_the_flag_before_the_model_loads(tmp_path, tiny_model_dir, capsys, flags,
                                                                           expected):
    # tiny_model_dir: the tiny bundle is written before capsys starts (its progress is not this test's output)
    from vace.server.cli import main

    assert main(["generate", "--prompt", "a fox", *flags, "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert "loading" not in err and not (tmp_path / "x.mp4").exists()


def test_cuda_without_a_gpu_and_a_missing_model_are_one_line_errors(tmp_path, tiny_home, capsys):
    import torch

    from vace.server.cli import main

    if not torch.cuda.is_available():
        assert main(["generate", "--prompt", "a", "--device", "cuda", "--out", str(tmp_path / "x.mp4")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --device: 'cuda' asks for a CUDA GPU and none is visible") and \
            err.count("\n") == 1
    assert main(["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "a", "--out",
                 str(tmp_path / "y.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model: ") and "weights directory not found" in err and err.count("\n") == 1


def test_generate_on_the_tiny_model_renders_small_and_resizes_like_serve(tmp_path, tiny_home, capsys):
    """The README's size on the tiny model: rendered under the demo cap (256 px), delivered at 832x480."""
    from vace.server.cli import main

    out = tmp_path / "fox.mp4"
    assert main(["generate", "--prompt", "a red fox running through snow", "--size", "832*480", "--frames", "9",
                 "--steps", "2", "--seed", "4", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["rendered_at"] == [256, 144] and (report["width"], report["height"]) == (832, 480)
    assert probe_video(out) == {"num_frames": 9, "width": 832, "height": 480, "fps": 16.0}
    assert "rendering at 256x144 (--max-render-side 256), resized to 832x480" in captured.err
    assert "loading tiny" in captured.err and "loaded in" in captured.err  # the model load is announced


def test_weights_annotators_takes_the_tiny_model_by_name(tiny_home, capsys):
    from vace.pipelines.conditioning.annotators.flow import torchvision_problem
    from vace.server.cli import main

    code = main(["weights", "annotators", "--model", "tiny"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"annotators root: {tiny_home / 'annotators'}"
    missing = [line.split()[0] for line in lines[1:] if "MISSING" in line]
    assert missing == (["raft"] if torchvision_problem() else [])  # the tiny RAFT is written only with torchvision
    assert code == (1 if missing else 0)


def test_generate_interpolates_and_expands_the_prompt(tmp_path, tiny_model_dir):
    out = tmp_path / "out.mp4"
    proc = vace("generate", "--model", "tiny", "--prompt", "a fox", "--size", "32*32", "--frames", "9", "--fps",
                "8", "--steps", "2", "--seed", "4", "--offload", "none", "--interpolate", "1", "--interpolator",
                "rife", "--expand-prompt", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["num_frames"], report["fps"], report["rendered_frames"], report["interpolator"]) == \
        (17, 16, 9, "rife")
    assert report["expanded_prompt"] and report["expanded_prompt"] != "a fox"
    assert probe_video(out) == {"num_frames": 17, "width": 32, "height": 32, "fps": 16.0}
    assert "interpolating 8/8" in proc.stderr


def test_generate_with_a_lora_and_preset_turbo(tmp_path, tiny_model_dir):
    out = tmp_path / "turbo.mp4"
    proc = vace("generate", "--model", "tiny", "--prompt", "a fox", "--size", "32*32", "--frames", "5",
                "--steps", "30", "--seed", "1", "--lora", "tiny-style:0.5", "--preset", "turbo", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["preset"] == "turbo" and report["steps"] == 4 and report["transformer_evaluations"] == 4
    assert [(r["lora"], r["scale"]) for r in report["loras"]] == [("tiny-distill", 1.0), ("tiny-style", 0.5)]
    proc = vace("generate", "--model", "tiny", "--prompt", "a", "--lora", "nope", "--out", str(tmp_path / "n.mp4"))
    assert proc.returncode == 2 and "error: --lora #1: no LoRA named 'nope'" in proc.stderr


def test_version(capsys):
    from vace.server.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("vace-server 0.1.0 (torch ")
