"""`vace batch` against the live tiny server: 30 rows end to end, SIGKILL and resume, bad rows, the cost report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.server_process import REPO, Server
from tests.synthetic import moving_square_frames, save_image, solid_image, write_video
from vace.pipelines.media.codec import probe_video
from vace.server.batch.execute import ServerBatch
from vace.server.batch.manifest import read_manifest
from vace.server.batch.progress import BatchProgress
from vace.server.batch.remote import ServerClient, ServerError
from vace.server.batch.state import STATE_FILE, BatchState

API_KEY = "batch-key"
OTHER_KEY = "another-tenant"
ADMIN_KEY = "batch-admin"  # counts every tenant's predictions
QUEUE_MAX = 2  # below the batch's concurrency, so the server answers 429 and the batch backs off


def job(prompt: str, **extra) -> dict:
    return {"prompt": prompt, "width": 32, "height": 32, "num_frames": 5, "steps": 1, "seed": 7, **extra}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = Server(tmp_path_factory.mktemp("batch") / "data", api_key=API_KEY,
                 args=["--model", "tiny", "--queue-max", str(QUEUE_MAX), "--api-key", OTHER_KEY,
                       "--admin-key", ADMIN_KEY])
    srv.start()
    yield srv
    srv.stop()


def vace_batch(server: Server, *args: str) -> subprocess.CompletedProcess:
    quiet = ["--no-progress"] if args[0] == "run" else []
    return subprocess.run([sys.executable, "-m", "vace.server.cli", "batch", *args, "--server", server.base_url,
                           "--api-key", API_KEY, *quiet], cwd=REPO, capture_output=True, text=True, timeout=600)


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def server_predictions(server: Server, prefix: str) -> list[dict]:
    """Every prediction on the server (every tenant's) whose prompt starts with `prefix` (all list pages)."""
    found, url = [], "/v1/predictions"
    with server.client() as http:
        while url:
            page = http.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
            found += [p for p in page["results"] if p["input"].get("prompt", "").startswith(prefix)]
            url = page["next"]
    return found


def test_thirty_rows_render_named_and_decodable(server: Server, tmp_path: Path):
    write_video(tmp_path / "src.mp4", moving_square_frames(9, 32, 32, size=8))
    save_image(solid_image(16, 16, (0, 200, 0)), tmp_path / "ref.png")
    rows = []
    for i in range(30):
        extra: dict = {"id": f"shot{i:02d}", "output": f"shots/shot_{i:02d}.mp4"}
        if i % 10 == 3:
            extra["video"] = "src.mp4"
        if i % 10 == 6:
            extra["reference_images"] = ["ref.png"]
        if i == 9:
            extra["loras"] = [{"name": "tiny-style", "scale": 0.5}]  # the tiny server's library
        if i == 29:
            extra["num_frames"] = 81  # the hosted price's hand-computed case: 81 frames at 16 fps, 480p tier
        rows.append({**job(f"thirty {i}"), **extra})
    manifest = write_manifest(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "out"
    proc = vace_batch(server, "run", str(manifest), "--out", str(out), "--concurrency", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "30 rendered, 0 failed, 0 skipped" in proc.stdout
    for i in range(30):
        frames = 81 if i == 29 else 5
        assert probe_video(out / "shots" / f"shot_{i:02d}.mp4") == {"num_frames": frames, "width": 32, "height": 32,
                                                                    "fps": 16.0}
    preds = server_predictions(server, "thirty ")
    assert len(preds) == 30 and all(p["status"] == "succeeded" for p in preds)
    assert sorted(p["input"]["prompt"] for p in preds) == sorted(f"thirty {i}" for i in range(30))
    uploaded = [p["input"]["video"] for p in preds if "video" in p["input"]]
    assert len(uploaded) == 3 and len(set(uploaded)) == 1  # one upload of src.mp4, used by three rows
    styled, = [p for p in preds if p["input"]["prompt"] == "thirty 9"]
    assert styled["input"]["loras"] == [{"name": "tiny-style", "scale": 0.5}]
    with server.client() as http:
        assert "loras: tiny-style x0.5" in http.get(f"/v1/predictions/{styled['id']}").json()["logs"]

    # Run again: nothing to do, nothing submitted.
    again = vace_batch(server, "run", str(manifest), "--out", str(out))
    assert again.returncode == 0 and "0 rendered, 0 failed, 30 skipped" in again.stdout
    assert len(server_predictions(server, "thirty ")) == 30

    # The report: totals are the sum of what the server recorded; hosted prices by hand.
    report = subprocess.run([sys.executable, "-m", "vace.server.cli", "batch", "report", str(out),
                             "--gpu-hour-price", "2.0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    body = json.loads((out / "batch-report.json").read_text())
    with server.client() as http:
        recorded = {p["id"]: http.get(f"/v1/predictions/{p['id']}").json()["metrics"]["gpu_seconds"] for p in preds}
    assert all(v > 0 for v in recorded.values())
    assert body["totals"]["gpu_seconds"] == pytest.approx(sum(recorded.values()), abs=1e-9)
    assert body["totals"]["gpu_cost_usd"] == pytest.approx(sum(recorded.values()) / 3600 * 2.0)
    by_id = {j["id"]: j for j in body["jobs"]}
    assert {j["prediction"]: j["gpu_seconds"] for j in body["jobs"]} == recorded
    assert by_id["shot29"]["hosted_usd"] == pytest.approx(0.2025)
    assert by_id["shot00"]["hosted_usd"] == pytest.approx(5 / 16 * 0.04)
    assert body["totals"]["hosted_usd"] == pytest.approx(0.2025 + 29 * 5 / 16 * 0.04)
    assert f"{sum(recorded.values()):.1f} GPU-seconds" in report.stdout


def test_sigkill_midway_then_rerun_renders_each_row_exactly_once(server: Server, tmp_path: Path):
    rows = [job(f"resume {i}", id=f"r{i}") for i in range(10)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vace.server.cli", "batch", "run", str(manifest), "--out", str(out),
           "--server", server.base_url, "--api-key", API_KEY, "--no-progress", "--concurrency", "3"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = wait_for_state(out, lambda s: sum(r.status == "succeeded" for r in s.rows.values()) >= 3, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    before = BatchState.load(out)
    finished = {rid: (out / f"{rid}.mp4").stat().st_mtime_ns for rid, r in before.rows.items()
                if r.status == "succeeded"}
    assert 3 <= len(finished) < 10, state.rows
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(finished)} skipped" in rerun.stdout
    preds = server_predictions(server, "resume ")
    assert sorted(p["input"]["prompt"] for p in preds) == sorted(f"resume {i}" for i in range(10))  # one each
    assert all(p["status"] == "succeeded" for p in preds)
    for rid, mtime in finished.items():  # finished outputs were neither rendered nor fetched again
        assert (out / f"{rid}.mp4").stat().st_mtime_ns == mtime
    for i in range(10):
        assert probe_video(out / f"r{i}.mp4")["num_frames"] == 5


def wait_for_state(out: Path, predicate, proc: subprocess.Popen, timeout: float = 300.0) -> BatchState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the batch finished before it could be killed"
        if (out / STATE_FILE).is_file():
            state = BatchState.load(out)
            if state is not None and predicate(state):
                return state
        time.sleep(0.05)
    raise AssertionError("the batch never reached the state to kill it in")


class LostAnswer(Exception):
    """The batch process 'dies' after the server accepted a create but before the answer was recorded."""


def test_a_create_whose_answer_was_lost_is_not_rendered_twice(server: Server, tmp_path: Path):
    manifest = read_manifest(write_manifest(tmp_path / "jobs.jsonl", [job("lost answer", id="only")]))
    out = tmp_path / "out"

    class CrashAfterCreate(ServerClient):
        def create(self, model, input, idempotency_key):
            super().create(model, input, idempotency_key)
            raise LostAnswer

    def run(client: ServerClient) -> None:
        state = BatchState.open(out, mode="server")
        progress = BatchProgress(1, enabled=False)
        batch = ServerBatch(client, "tiny", state, manifest, progress, concurrency=1)
        batch.run(manifest.rows)

    crashing = CrashAfterCreate(server.base_url, API_KEY)
    run(crashing)
    crashing.close()
    assert BatchState.load(out).rows["only"].status == "submitting"
    client = ServerClient(server.base_url, API_KEY)
    run(client)
    client.close()
    preds = server_predictions(server, "lost answer")
    assert len(preds) == 1 and preds[0]["status"] == "succeeded"
    assert BatchState.load(out).rows["only"].get("prediction") == preds[0]["id"]
    assert probe_video(out / "only.mp4")["num_frames"] == 5


def test_three_bad_rows_are_named_and_nothing_is_queued(server: Server, tmp_path: Path):
    write_video(tmp_path / "clip.mp4", moving_square_frames(5, 32, 32, size=8))
    manifest = write_manifest(tmp_path / "bad.jsonl", [
        job("bad rows ok", video="clip.mp4"),
        job("bad rows unknown", colour="red"),
        job("bad rows size", width=40),
        job("bad rows missing", video="takes/missing.mp4"),
        job("bad rows ok too"),
        job("bad rows lora", loras=[{"name": "tiny-style"}, {"name": "absent", "scale": 0.5}]),
    ])
    check = vace_batch(server, "check", str(manifest))
    assert check.returncode == 1
    lines = check.stderr.strip().splitlines()
    assert lines == ["line 2 (row2): colour: unknown field",
                     "line 3 (row3): width: must be a multiple of 16, got 40",
                     f"line 4 (row4): video: file not found: {tmp_path / 'takes/missing.mp4'}",
                     "line 6 (row6): loras[1].name: the server has no LoRA named 'absent'; it has: tiny-distill, "
                     "tiny-style, tiny-style-comfy, tiny-style-kohya",
                     "4 of 6 rows are invalid"]
    run = vace_batch(server, "run", str(manifest), "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and "nothing was queued" in run.stderr
    assert "line 3 (row3): width: must be a multiple of 16, got 40" in run.stderr
    assert server_predictions(server, "bad rows") == []
    assert not (tmp_path / "out").exists()


def test_the_api_returns_the_first_prediction_for_a_repeated_key(server: Server):
    def create(prompt: str, key: str, api_key: str = API_KEY) -> httpx.Response:
        with server.client() as http:
            return http.post("/v1/models/vace/tiny/predictions", json={"input": job(prompt)},
                             headers={"Idempotency-Key": key, "Authorization": f"Bearer {api_key}"})

    first = create("idem first", "same-key")
    again = create("idem second", "same-key")
    assert first.status_code == 201 and again.status_code == 201, again.text
    assert again.json()["id"] == first.json()["id"] and again.json()["input"]["prompt"] == "idem first"
    # The same key from another API key (tenant) is another prediction.
    other_tenant = create("idem other tenant", "same-key", api_key=OTHER_KEY)
    assert other_tenant.status_code == 201 and other_tenant.json()["id"] != first.json()["id"]
    bad = create("idem bad key", "has spaces in it")
    assert bad.status_code == 422
    assert bad.json()["invalid_fields"][0]["field"] == "Idempotency-Key"
    assert len(server_predictions(server, "idem ")) == 2


def test_a_server_that_refuses_the_key_stops_the_batch_before_anything_is_queued(server: Server, tmp_path: Path):
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job("wrong key")])
    proc = subprocess.run([sys.executable, "-m", "vace.server.cli", "batch", "run", str(manifest), "--out",
                           str(tmp_path / "out"), "--server", server.base_url, "--api-key", "nope", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "HTTP 401" in proc.stderr
    assert server_predictions(server, "wrong key") == []


def test_a_missing_prediction_is_a_server_error_with_the_servers_words(server: Server):
    client = ServerClient(server.base_url, API_KEY)
    try:
        with pytest.raises(ServerError) as info:
            client.get("doesnotexist")
    finally:
        client.close()
    assert info.value.status == 404 and "doesnotexist" in info.value.message
