"""Measure what the queue itself costs: the store queries an idle server sends each second, and how much a job
takes end to end beyond its render (create -> terminal as a client sees it, minus the worker's predict_time).

    python -m vace.server.queue_bench [--model tiny] [--idle-s 20] [--jobs 10] [--database-url URL]

Starts `vace serve` on a free loopback port with a fresh data dir (and its SQLite store, or the empty database
`--database-url` names), prints the figures, stops it. Figures, not
pass/fail: they depend on the machine.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

JOB = {"prompt": "a red square", "width": 32, "height": 32, "num_frames": 5, "steps": 1, "seed": 1}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(http: httpx.Client, proc: subprocess.Popen, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            resp = http.get("/health")
            if resp.status_code == 200:
                return resp.json()
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become READY")


def _queries(http: httpx.Client) -> int:
    counts = http.get("/health").json()["store_queries"]
    return int(counts["api"]) + int(counts["worker"])


def idle_rate(http: httpx.Client, seconds: float) -> float:
    """Store queries per second of an idle server (the /health reads used to measure are subtracted)."""
    time.sleep(3.0)  # let start-up work settle
    first = _queries(http)
    time.sleep(seconds)
    second = _queries(http)
    return (second - first - 1) / seconds  # -1: the first /health's own count query


def job_overheads(http: httpx.Client, jobs: int) -> list[float]:
    """Seconds each job took as a client saw it (create -> terminal, polling every 20 ms) minus predict_time."""
    overheads = []
    for i in range(jobs):
        start = time.monotonic()
        pred = http.post("/v1/models/vace/tiny/predictions", json={"input": {**JOB, "seed": i}}).json()
        while pred["status"] not in ("succeeded", "failed", "canceled"):
            time.sleep(0.02)
            pred = http.get(f"/v1/predictions/{pred['id']}").json()
        wall = time.monotonic() - start
        if pred["status"] != "succeeded":
            raise SystemExit(f"job {pred['id']} {pred['status']}: {pred.get('error')}")
        overheads.append(wall - float(pred["metrics"]["predict_time"]))
    return overheads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite in the data dir)")
    args = parser.parse_args(argv)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="vace-queue-bench-") as tmp:
        cmd = [sys.executable, "-m", "vace.server.cli", "serve", "--model", args.model, "--host", "127.0.0.1",
               "--port", str(port), "--data-dir", str(Path(tmp) / "data"), "--log-level", "warning"]
        if args.database_url:
            cmd += ["--database-url", args.database_url]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                _wait_ready(http, proc)
                rate = idle_rate(http, args.idle_s)
                store = "PostgreSQL" if args.database_url else "SQLite"
                print(f"idle store queries: {rate:.2f}/s on {store} (API and worker together, over {args.idle_s:g} s)")
                overheads = job_overheads(http, args.jobs)
                print(f"per-job overhead over the render: median {1000 * statistics.median(overheads):.0f} ms, "
                      f"max {1000 * max(overheads):.0f} ms ({args.jobs} jobs, client polling every 20 ms)")
        finally:
            proc.terminate()
            proc.wait(120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
