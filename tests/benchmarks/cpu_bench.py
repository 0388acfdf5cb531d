"""The real Wan2.1-VACE-1.3B through `vace bench` on a CPU at the toy size: presets and a 2-rank gloo group.

    python -m tests.benchmarks.cpu_bench                        # the real 1.3B, 64x64, 5 frames, 2 steps
    python -m tests.benchmarks.cpu_bench --model tiny           # the harness at the tiny size (what the test runs)
    python -m tests.benchmarks.cpu_bench --runs none,regular@2  # PRESET[@RANKS], comma-separated

Each run is its own `vace bench` process (one at a time, so no run's memory counts in another), with random
weights written once as a bf16 checkpoint that the process, or both ranks, map. A run starts only while at least
--min-free-gib of host memory is available; otherwise the script stops and says so. It prints each run's
command and one table: s/step, transformer evaluations done / skipped, FLOPs per forward against torch's counter,
and the peak host memory of the process tree (summed Pss: shared weight pages counted once).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.benchmarks.rss import ROOT, report

DEFAULT_RUNS = "none,low,regular,none@2"


def available_gib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def command(model: str, preset: str, ranks: int, out: Path) -> list[str]:
    return ["vace", "bench", "--model", model, "--device", "cpu", "--size", "64*64", "--frames", "5", "--steps", "2",
            "--preset", preset, *(["--sequence-parallel", str(ranks)] if ranks > 1 else []), "--out", str(out)]


def row(name: str, result: dict) -> dict:
    memory = result["host_memory"]
    return {"run": name, "dtype": result["dtype"], "seconds_per_step": result["seconds_per_step"],
            "evaluations": result["transformer_evaluations"], "skipped": result["transformer_evaluations_skipped"],
            "flops_per_forward": result["flops_per_forward"],
            "flops_vs_counter": result["flops_check"]["relative_difference"],
            "peak_pss_gib": memory["peak_pss_gib"], "peak_anonymous_gib": memory["peak_anonymous_gib"],
            "total_seconds": result["total_seconds"]}


def print_table(rows: list[dict]) -> None:
    print(f"{'run':<12} {'dtype':<9} {'s/step':>8} {'evals':>5} {'skip':>4} {'GFLOP/fwd':>10} {'vs counter':>10} "
          f"{'peak Pss GiB':>12} {'anon GiB':>8} {'total s':>8}")
    for r in rows:
        print(f"{r['run']:<12} {r['dtype']:<9} {r['seconds_per_step']:>8.1f} {r['evaluations']:>5} {r['skipped']:>4} "
              f"{r['flops_per_forward'] / 1e9:>10.1f} {r['flops_vs_counter']:>10.1e} {r['peak_pss_gib']:>12.2f} "
              f"{r['peak_anonymous_gib']:>8.2f} {r['total_seconds']:>8.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="1.3b")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="PRESET[@RANKS],... (default %(default)s)")
    parser.add_argument("--min-free-gib", type=float, default=9.0,
                        help="start a run only while this much host memory is available")
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args(argv)
    vace = str(Path(sys.executable).with_name("vace"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="vace-cpu-bench-") as tmp:
        for spec in args.runs.split(","):
            preset, _, ranks = spec.partition("@")
            free = available_gib()
            if free < args.min_free_gib:
                print(f"stopped before {spec}: {free:.1f} GiB of host memory available, --min-free-gib "
                      f"{args.min_free_gib:g}", file=sys.stderr)
                return 3
            out = Path(tmp) / f"{preset}-{ranks or 1}.json"
            argv_ = command(args.model, preset, int(ranks or 1), out)
            print("$ " + " ".join(argv_), flush=True)
            subprocess.run([vace, *argv_[1:]], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            rows.append(row(spec, json.loads(out.read_text())))
    print_table(rows)
    return report({"model": args.model, "size": "64*64", "frames": 5, "steps": 2, "runs": rows}, args.out)


if __name__ == "__main__":
    sys.exit(main())
