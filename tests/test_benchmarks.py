"""Each memory benchmark in tests/benchmarks/ runs end to end at a toy size and reports its figures."""

from __future__ import annotations

import json


def test_decode_memory_script_runs_at_a_toy_size(tmp_path, capsys):
    from tests.benchmarks import decode_memory

    out = tmp_path / "decode.json"
    assert decode_memory.main(["--source", "96x54", "--source-frames", "13", "--size", "32*32", "--frames", "9",
                               "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert len(results) == 5 and "peak MiB" in capsys.readouterr().out
    assert all(r["peak_above_baseline_bytes"] >= 0 for r in results.values())
    # Decoded at the size covering 32x32 (16:9 -> 57x32), as uint8, cut to the job's frames unless matching.
    assert results["decode video, job frames"]["arrays"]["video"] == {"shape": [9, 32, 57, 3], "dtype": "uint8",
                                                                       "bytes": 9 * 32 * 57 * 3}
    assert results["decode video, match_input_num_frames"]["arrays"]["video"]["shape"][0] == 13
    assert results["inpainting conditioning, job frames"]["arrays"]["conditioning_video"]["shape"] == [9, 32, 32, 3]


def test_loading_memory_script_runs_at_a_toy_size(tiny_home, tmp_path, capsys):
    from tests.benchmarks import loading_memory

    out = tmp_path / "load.json"
    assert loading_memory.main(["--shape", "tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["checkpoint_bytes"]) == {"text_encoder", "transformer", "vae"}
    assert report["disk_bytes"] == sum(report["checkpoint_bytes"].values()) > 0
    assert report["peak_above_baseline_bytes"] >= 0 and report["ratio"] == report["peak_above_baseline_bytes"] / \
        report["disk_bytes"]
    # dtype="bfloat16" keeps the transformer and text encoder in bf16 on a CPU (the VAE stays fp32).
    assert "bfloat16" in report["dtypes"]["transformer"] and set(report["dtypes"]["vae"]) == {"float32"}
    assert "x the bytes on disk" in capsys.readouterr().out


def test_cpu_bench_script_runs_at_a_toy_size(tiny_home, tmp_path, capsys):
    """The 1.3B CPU benchmark's harness, on the tiny model: one preset through a 2-rank gloo group."""
    from tests.benchmarks import cpu_bench

    out = tmp_path / "cpu-bench.json"
    assert cpu_bench.main(["--model", "tiny", "--runs", "regular@2", "--min-free-gib", "0", "--out", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["run"] == "regular@2" and run["evaluations"] + run["skipped"] == 4
    assert run["peak_pss_gib"] > 0 and run["flops_vs_counter"] < 0.01  # the tiny model: 1.1e-3
    printed = capsys.readouterr().out
    assert "--sequence-parallel 2" in printed and "peak Pss GiB" in printed
