"""Crash safety: SIGKILL of the server mid-job and restart; death of the worker process; failing jobs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.server_process import LONG_JOB, Server, stopped
from tests.server_process import wait_for as wait_until
from vace.server.store import Store, database_url

TERMINAL = ("succeeded", "failed", "canceled")


def small(**extra) -> dict:
    return {"prompt": "a square", "width": 64, "height": 64, "num_frames": 9, "steps": 2, **extra}


def create(http: httpx.Client, **extra) -> str:
    resp = http.post("/v1/models/vace/tiny/predictions", json={"input": small(**extra)})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def wait_for(http: httpx.Client, pid: str, predicate, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"/v1/predictions/{pid}").json()
        if predicate(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"prediction {pid} never reached the expected state: {body}")


def running(body: dict) -> bool:
    return body["status"] == "processing" and "denoising step" in body["logs"]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One plain server for the tests that leave it READY (a killed worker is replaced)."""
    server = Server(tmp_path_factory.mktemp("recovery") / "data", args=["--model", "tiny"]).start()
    yield server
    server.stop()


def test_sigkill_and_restart_leaves_nothing_processing(tiny_model_dir: Path, tmp_path: Path):
    data_dir = tmp_path / "data"
    server = Server(data_dir, args=["--model", "tiny"]).start()
    try:
        with server.client() as http:
            long_id = create(http, **LONG_JOB)
            queued = [create(http, seed=i) for i in range(2)]
            wait_for(http, long_id, running)
            server.kill()
    finally:
        server.kill()

    server = Server(data_dir, args=["--model", "tiny"]).start(wait_ready=False)
    try:
        with server.client() as http:
            states = {pid: http.get(f"/v1/predictions/{pid}").json() for pid in [long_id, *queued]}
            assert states[long_id]["status"] == "failed"
            assert "interrupted" in states[long_id]["error"]
            for pid in queued:  # still waiting (or already picked up by the new worker)
                assert states[pid]["status"] in ("starting", "processing", "succeeded")
            for pid in queued:
                assert wait_for(http, pid, lambda b: b["status"] in TERMINAL)["status"] == "succeeded"
    finally:
        server.stop()


def test_worker_death_fails_its_job_and_a_new_worker_takes_over(server: Server):
    with server.client() as http:
        restarts = http.get("/health").json()["worker"]["restarts"]
        doomed = create(http, **LONG_JOB)
        after = create(http)
        wait_for(http, doomed, running)
        worker_pid = http.get("/health").json()["worker"]["pid"]
        os.kill(worker_pid, signal.SIGKILL)
        failed = wait_for(http, doomed, lambda b: b["status"] in TERMINAL)
        assert failed["status"] == "failed" and "worker process died" in failed["error"]
        assert wait_for(http, after, lambda b: b["status"] in TERMINAL)["status"] == "succeeded"
        health = http.get("/health").json()
        assert health["status"] == "READY" and health["worker"]["restarts"] == restarts + 1
        assert health["worker"]["pid"] != worker_pid


def test_a_job_lost_before_denoising_is_requeued_once_and_runs(tiny_model_dir: Path, tmp_path: Path):
    """The fault-test hook stops the first worker just before its first job starts denoising; that worker is then
    killed. The job goes back to the queue (once: counted on its row) and the replacement worker renders it."""
    server = Server(tmp_path / "data", args=["--model", "tiny", "--test-stop-at-step", "0"]).start()
    try:
        with server.client() as http:
            job = create(http)
            worker_pid = http.get("/health").json()["worker"]["pid"]
            wait_until(lambda: stopped(worker_pid), "the worker to reach the hook")
            assert http.get(f"/v1/predictions/{job}").json()["status"] == "processing"
            os.kill(worker_pid, signal.SIGKILL)
            done = wait_for(http, job, lambda b: b["status"] in TERMINAL)
            assert done["status"] == "succeeded", done["error"]
            assert ("requeued: the worker process died (exit code -9) before this prediction started denoising"
                    in done["logs"])
            assert http.get("/health").json()["worker"]["restarts"] == 1
    finally:
        server.stop()
    store = Store(database_url(server.data_dir))
    try:
        assert store.get(job).requeues == 1
    finally:
        store.close()


def test_undecodable_media_is_refused_at_submit_and_the_queue_goes_on(server: Server):
    """A video that cannot be decoded used to fail in the worker; it is now refused when submitted (sniffed
    and decoded far enough at submit), naming the field, and creates no prediction. A job that does fail in
    the worker fails alone: see test_server_trust (a hung worker's job fails, the next one succeeds)."""
    with server.client() as http:
        before = [p["id"] for p in http.get("/v1/predictions").json()["results"]]  # the server is the module's
        broken = "data:video/mp4;base64,AAAAAAAA"  # well-formed base64, not a video
        resp = http.post("/v1/models/vace/tiny/predictions", json={"input": small(video=broken)})
        assert resp.status_code == 422 and resp.json()["invalid_fields"][0]["field"] == "video"
        assert [p["id"] for p in http.get("/v1/predictions").json()["results"]] == before
        good = create(http)
        assert wait_for(http, good, lambda b: b["status"] in TERMINAL)["status"] == "succeeded"
