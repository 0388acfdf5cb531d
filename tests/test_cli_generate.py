"""`vace generate` end to end in a subprocess on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_generate_bad_input_is_one_clear_error(tmp_path, tiny_model_dir):
    proc = vace("generate", "--model", "tiny", "--prompt", "a fox", "--size", "60*48", "--out",
                str(tmp_path / "x.mp4"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: width: must be a multiple of 16, got 60"
    proc = vace("generate", "--model", str(tmp_path / "nowhere"), "--prompt", "a", "--out", str(tmp_path / "y.mp4"))
    assert proc.returncode == 2 and "weights directory not found" in proc.stderr
    proc = vace("generate", "--model", "tiny", "--prompt", "a", "--preset", "warp", "--out", str(tmp_path / "z.mp4"))
    assert proc.returncode == 2 and "preset: unknown preset 'warp'" in proc.stderr


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
    assert proc.returncode == 2 and "loras[0].name: no LoRA named 'nope'" in proc.stderr
