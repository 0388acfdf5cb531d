"""`vace bench` on CPU at the tiny shape writes a complete, self-consistent report."""

from __future__ import annotations

import argparse
import json

import pytest

REPORT_KEYS = {
    "model", "device", "dtype", "preset", "step_cache", "offload", "sequence_parallel", "width", "height", "frames",
    "steps", "cfg", "latent_tokens", "flops_per_forward", "transformer_evaluations",
    "transformer_evaluations_skipped", "seconds_per_step", "seconds_per_step_mean", "setup_and_first_step_seconds",
    "stages", "peak_gpu_memory_gib", "peak_rss_gib", "achieved_tflops", "effective_tflops", "peak_tflops", "mfu",
    "gpu_levers", "versions", "config",
}


def main(argv: list[str]) -> int:
    """`vace bench` through its own registration (what server.cli does for every subcommand module)."""
    from vace.pipelines.bench import benchmark as bench

    parser = argparse.ArgumentParser(prog="vace")
    bench.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


def _bench(tmp_path, *extra: str) -> tuple[int, dict | None]:
    out = tmp_path / "report.json"
    code = main(["bench", "--model", "tiny", "--size", "64*64", "--frames", "17", "--steps", "4",
                 "--device", "cpu", "--out", str(out), *extra])
    return code, json.loads(out.read_text()) if out.exists() else None


def test_bench_cpu_tiny_writes_complete_report(tiny_home, tmp_path):
    from vace.pipelines.acceleration.flops import transformer_flops

    code, report = _bench(tmp_path)
    assert code == 0
    assert REPORT_KEYS <= set(report)
    assert report["device"].startswith("cpu") and report["peak_gpu_memory_gib"] is None and report["mfu"] is None
    assert report["transformer_evaluations"] == 8 and report["transformer_evaluations_skipped"] == 0
    assert set(report["stages"]) >= {"load_model", "encode_prompt", "denoise", "decode", "write"}
    assert all(v >= 0 for v in report["stages"].values())
    assert report["seconds_per_step"] > 0 and report["achieved_tflops"] > 0
    assert report["latent_tokens"] == 5 * 4 * 4
    from vace.pipelines.fixtures.tiny_model import resolve_model

    config = json.loads((resolve_model("tiny") / "transformer" / "config.json").read_text())
    assert report["flops_per_forward"] == transformer_flops(config, 64, 64, 17)
    assert report["gpu_levers"]["attention_backend"] == "native"


def test_bench_with_a_preset_counts_skips(tiny_home, tmp_path):
    code, report = _bench(tmp_path, "--preset", "Extra Juiced 🚀 (even more speed)")
    assert code == 0
    assert report["preset"] == "regular"
    assert report["transformer_evaluations"] + report["transformer_evaluations_skipped"] == 8


@pytest.mark.parametrize("args", [["--model", "14b"], ["--sequence-parallel", "2", "--offload", "model"],
                                  ["--offload", "half"]])
def test_bench_refuses_what_it_cannot_run(tiny_home, tmp_path, capsys, args):
    code = main(["bench", "--device", "cpu", "--size", "64*64", "--frames", "5", "--steps", "1",
                 "--out", str(tmp_path / "r.json"), *args])
    assert code == 2 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_real_shape_components_build_on_meta(tiny_home):
    """The 14B build path: the real classes at the published config (no memory allocated on meta)."""
    from vace.pipelines.bench.benchmark import random_components

    parts = random_components("14b", "meta")
    count = {k: sum(p.numel() for p in parts[k].parameters()) / 1e9 for k in ("transformer", "text_encoder")}
    assert count["transformer"] == pytest.approx(17.34, abs=0.01)
    assert count["text_encoder"] == pytest.approx(5.68, abs=0.01)
    assert len(parts["transformer"].blocks) == 40 and len(parts["transformer"].vace_blocks) == 8


def test_sharded_bench_runs_a_two_rank_group(tiny_home, tmp_path):
    """`--sequence-parallel 2` on CPU: the same job through a 2-process gloo group, reported per group size."""
    code, report = _bench(tmp_path, "--sequence-parallel", "2", "--sp-mode", "ring")
    assert code == 0
    assert REPORT_KEYS <= set(report)
    assert report["sequence_parallel"] == 2 and report["sp_mode"] == "ring" and report["devices"] == ["cpu", "cpu"]
    assert report["transformer_evaluations"] == 8 and report["transformer_evaluations_skipped"] == 0
    assert report["seconds_per_step"] > 0 and report["stages"]["load_model"] > 0


@pytest.mark.parametrize("args", [["--preset", "turbo"], ["--steps", "0"], ["--offload", "half"],
                                  ["--preset", "turbo", "--sequence-parallel", "2"]])
def test_bench_refuses_a_bad_job_before_building_anything(tmp_path, capsys, monkeypatch, args):
    """A bad preset, step count or offload mode is refused before a (possibly 14B, minutes-long) model build."""
    from vace.pipelines.bench import benchmark as bench
    from vace.pipelines.engine import group as distributed

    def must_not_run(*a, **k):
        raise AssertionError("model built or group started for a job that is refused anyway")

    monkeypatch.setattr(bench, "build_model", must_not_run)
    monkeypatch.setattr(distributed, "RenderGroup", must_not_run)
    code = main(["bench", "--device", "cpu", "--size", "64*64", "--frames", "5", "--steps", "1",
                 "--out", str(tmp_path / "r.json"), *args])
    assert code == 2 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
