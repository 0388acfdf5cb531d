"""Trust, driven against the live server: a hung worker is replaced, bad input never makes a row, the queue cap is
exact, keys are tenants. Faults come from test hooks (the worker stops itself at a step; SIGSTOP/SIGCONT), and
waits are bounded polls, never timing assertions."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server_process import Server, release, stopped, wait_for
from tests.synthetic import data_uri, solid_image
from tests.system_deps import missing, need_debian
from vace.server.store import Prediction, Store, database_url

KEY_A, KEY_B, ADMIN = "key-a-0123456789", "key-b-0123456789", "admin-0123456789"
CREATE = "/v1/models/vace/tiny/predictions"
FAL_SUBMIT = "/queue/fal-ai/wan-vace-14b"
WS_SUBMIT = "/api/v3/wavespeed-ai/wan-2.1-14b-vace"


def tiny_input(**extra) -> dict:
    return {"prompt": "a red square", "width": 32, "height": 32, "num_frames": 5, "steps": 3,
            "seed": 1, **extra}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    server = Server(tmp_path_factory.mktemp("trust") / "data", args=[
        "--model", f"tiny={tiny_model_dir}", "--api-key", KEY_A, "--api-key", KEY_B, "--admin-key", ADMIN,
        "--worker-timeout", "20", "--test-stop-at-step", "2", "--max-upload-mb", "1", "--max-body-mb", "2"])
    server.start()
    yield server
    server.stop()


def client(server: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def health(server: Server) -> dict:
    with client(server, ADMIN) as http:
        return http.get("/health").json()


def finished(http: httpx.Client, prediction_id: str) -> dict | None:
    body = http.get(f"/v1/predictions/{prediction_id}").json()
    return body if body["status"] in ("succeeded", "failed", "canceled") else None


def row_count(server: Server) -> int:
    with client(server, ADMIN) as http:
        resp = http.get("/v1/predictions")
        assert resp.status_code == 200
        return len(resp.json()["results"])


def test_a_hung_worker_is_killed_its_job_failed_and_a_new_worker_finishes_the_queue(server: Server):
    """The first worker stops itself (SIGSTOP) at step 2 of its first job: /health leaves READY, the job fails
    saying the worker stopped responding, and a fresh worker runs the job queued behind it."""
    first = health(server)["worker"]
    with client(server, KEY_A) as http:
        hung = http.post(CREATE, json={"input": tiny_input()}).json()
        queued = http.post(CREATE, json={"input": tiny_input(seed=2)}).json()
        seen = wait_for(lambda: (h := health(server))["status"] != "READY" and h, "/health to leave READY")
        assert seen["status"] == "DEGRADED" and "no heartbeat" in seen["reason"]
        failed = wait_for(lambda: finished(http, hung["id"]), "the hung job to end")
        assert failed["status"] == "failed" and "stopped responding" in failed["error"]
        done = wait_for(lambda: finished(http, queued["id"]), "the queued job to run")
        assert done["status"] == "succeeded"
    after = wait_for(lambda: (h := health(server))["status"] == "READY" and h, "/health READY again")
    assert after["worker"]["pid"] != first["pid"] and after["worker"]["restarts"] == first["restarts"] + 1


def test_a_worker_stopped_from_outside_is_replaced_and_runs_the_queue(server: Server):
    """SIGSTOP sent to the idle worker from outside (as a hung driver leaves it): /health leaves READY once the
    heartbeat deadline passes, the worker is killed and replaced, and the job queued meanwhile runs on the new one."""
    before = wait_for(lambda: (h := health(server))["status"] == "READY" and h["worker"], "a READY worker")
    os.kill(before["pid"], signal.SIGSTOP)
    with client(server, KEY_A) as http:
        pred = http.post(CREATE, json={"input": tiny_input(seed=7)}).json()
        seen = wait_for(lambda: (h := health(server))["status"] != "READY" and h, "/health to leave READY")
        assert seen["status"] == "DEGRADED" and "no heartbeat" in seen["reason"]
        done = wait_for(lambda: finished(http, pred["id"]), "the queued job on the new worker")
        assert done["status"] == "succeeded", done["error"]
    after = wait_for(lambda: (h := health(server))["status"] == "READY" and h, "/health READY again")
    assert after["worker"]["pid"] != before["pid"] and after["worker"]["restarts"] == before["restarts"] + 1


BAD_PROMPTS = {
    "lone surrogate": '"a cat \\ud800 on a mat"',
    "oversize prompt": json.dumps("word " * 600),  # 600 words: over the text encoder's 512 tokens
}


@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
def test_bad_prompts_get_a_4xx_naming_the_field_in_every_dialect_and_no_row(server: Server, case: str):
    before = row_count(server)
    prompt = BAD_PROMPTS[case]
    bodies = {
        CREATE: '{"input": {"prompt": ' + prompt + ', "width": 32, "height": 32}}',
        FAL_SUBMIT: '{"prompt": ' + prompt + ', "enable_safety_checker": false}',
        WS_SUBMIT: '{"prompt": ' + prompt + ', "enable_safety_checker": false}',
    }
    with client(server, KEY_A) as http:
        for path, body in bodies.items():
            resp = http.post(path, content=body, headers={"content-type": "application/json"})
            assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text)
            assert "prompt" in resp.text, (path, resp.text)
            assert "/" + str(server.data_dir).strip("/") not in resp.text  # no server paths
    assert row_count(server) == before


def test_deep_json_and_oversize_bodies_are_refused_in_every_dialect(server: Server):
    before = row_count(server)
    deep = '{"input": ' + "[" * 1000 + "]" * 1000 + "}"
    with client(server, KEY_A) as http:
        for path in (CREATE, FAL_SUBMIT, WS_SUBMIT, "/v1/files"):
            resp = http.post(path, content=deep, headers={"content-type": "application/json"})
            assert 400 <= resp.status_code < 500 and "nested deeper" in resp.text, (path, resp.text)
        big = json.dumps({"input": tiny_input(first_frame="data:image/png;base64," + "A" * (3 * 1024 * 1024))})
        for path in (CREATE, FAL_SUBMIT, WS_SUBMIT):
            resp = http.post(path, content=big, headers={"content-type": "application/json"})
            assert resp.status_code == 413 and "--max-body-mb" in resp.text, (path, resp.text)
        two_mb = b"\0" * (2 * 1024 * 1024)
        resp = http.post("/v1/files", files={"content": ("big.bin", two_mb, "application/octet-stream")})
        assert resp.status_code == 413 and "--max-upload-mb" in resp.text
        resp = http.post("/api/v3/media/upload/binary", files={"file": ("big.bin", two_mb, "image/png")})
        assert resp.status_code == 413
        assert http.get("/v1/files").json()["results"] == []
    assert row_count(server) == before


def test_media_is_checked_by_content_at_submit(server: Server):
    before = row_count(server)
    text_as_png = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    small_ref = data_uri(solid_image(32, 32, (9, 9, 9)))
    with client(server, KEY_A) as http:
        resp = http.post(CREATE, json={"input": tiny_input(reference_images=[text_as_png])})
        assert resp.status_code == 422 and "reference_images" in resp.text
        resp = http.post(CREATE, json={"input": tiny_input(reference_images=[small_ref] * 3)})
        assert resp.status_code == 422 and "reference images need at least 9 frames" in resp.text
        resp = http.post(CREATE, json={"input": tiny_input(first_frame="data:image/png;base64")})
        assert resp.status_code == 422
    assert row_count(server) == before


def test_keys_are_tenants(server: Server):
    png = base64.b64decode(data_uri(solid_image(16, 16, (1, 2, 3))).split(",", 1)[1])
    with client(server, KEY_A) as a, client(server, KEY_B) as b, client(server, ADMIN) as admin:
        mine = a.post(CREATE, json={"input": tiny_input()}).json()
        upload = a.post("/v1/files", files={"content": ("a.png", png, "image/png")}).json()
        assert b.get(f"/v1/predictions/{mine['id']}").status_code == 404
        assert mine["id"] not in {p["id"] for p in b.get("/v1/predictions").json()["results"]}
        assert b.post(f"/v1/predictions/{mine['id']}/cancel").status_code == 404
        assert b.get(f"{FAL_SUBMIT}/requests/{mine['id']}/status").status_code == 404
        assert b.get(f"/v1/files/{upload['id']}").status_code == 404
        assert b.delete(f"/v1/files/{upload['id']}").status_code == 404
        assert b.get("/v1/files").json()["results"] == []
        # B cannot use A's upload as an input either
        resp = b.post(CREATE, json={"input": tiny_input(first_frame=upload["urls"]["get"])})
        assert resp.status_code == 422
        assert a.get(f"/v1/predictions/{mine['id']}").status_code == 200
        assert mine["id"] in {p["id"] for p in admin.get("/v1/predictions").json()["results"]}
        secrets = {k: c.get("/v1/webhooks/default/secret").json()["key"] for k, c in (("a", a), ("b", b))}
        assert secrets["a"] != secrets["b"]
        wait_for(lambda: finished(a, mine["id"]), "A's prediction to finish")


def test_the_queue_cap_is_exact_under_concurrency(tiny_model_dir: Path, tmp_path: Path):
    """200 creates at once against --queue-max 10: exactly 10 are admitted, the rest get 429 with a Retry-After.
    The API-only server admits them (no worker consumes any meanwhile, so the count is exact); a server with a
    worker, started on the same data, then runs every admitted one to success. (A cap of 10, not 100, keeps the
    renders that follow short; the race is the same.)"""
    api = Server(tmp_path / "data", api_key=KEY_A, args=["--model", f"tiny={tiny_model_dir}", "--no-worker",
                                                          "--queue-max", "10"])
    api.start()
    try:
        with api.client() as http, ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: http.post(CREATE, json={"input": tiny_input(seed=i, steps=1)}),
                                    range(200)))
    finally:
        api.stop()
    codes = [r.status_code for r in answers]
    assert codes.count(201) == 10 and codes.count(429) == 190
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 429)
    admitted = [r.json()["id"] for r in answers if r.status_code == 201]
    worker = Server(tmp_path / "data", api_key=KEY_A, args=["--model", f"tiny={tiny_model_dir}"])
    worker.start()
    try:
        with worker.client() as http:
            for prediction_id in admitted:
                done = wait_for(lambda p=prediction_id: finished(http, p), "the admitted predictions", timeout=600)
                assert done["status"] == "succeeded", done["error"]
    finally:
        worker.stop()


def test_a_pending_webhook_retry_survives_a_restart(tiny_model_dir: Path, tmp_path: Path):
    """The receiver fails the `completed` delivery; the server is stopped with the retry pending in the outbox;
    the restarted server delivers it."""
    import http.server
    import threading

    accept = threading.Event()
    received: list[dict] = []
    failed: list[int] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if accept.is_set():
                received.append(body)
                self.send_response(200)
            else:
                failed.append(1)
                self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{httpd.server_port}/hook"
    args = ["--model", f"tiny={tiny_model_dir}", "--allow-host", "127.0.0.1", "--webhook-attempts", "20"]
    server = Server(tmp_path / "data", api_key=KEY_A, args=args)
    try:
        server.start()
        with server.client() as http:
            pred = http.post(CREATE, json={"input": tiny_input(), "webhook": hook,
                                           "webhook_events_filter": ["completed"]}).json()
            wait_for(lambda: finished(http, pred["id"]), "the prediction to finish")
        wait_for(lambda: failed, "a failed delivery attempt")
        server.stop()
        accept.set()
        server.start()
        wait_for(lambda: received, "the completed webhook after the restart")
        assert received[0]["id"] == pred["id"] and received[0]["status"] == "succeeded"
    finally:
        server.stop()
        httpd.shutdown()


def _paused_job(server: Server) -> tuple[str, int]:
    """Submit a job, and wait until the worker has stopped itself at the hook's step: (prediction id, worker pid)."""
    pid = health(server)["worker"]["pid"]
    with server.client() as http:
        pred = http.post(CREATE, json={"input": tiny_input()}).json()
        wait_for(lambda: http.get(f"/v1/predictions/{pred['id']}").json()["status"] == "processing" and stopped(pid),
                 "the worker to stop at the hook's step")
    return pred["id"], pid


def _stored(data_dir: Path) -> list[Prediction]:
    """The predictions the stopped server left in its store, newest first."""
    store = Store(database_url(data_dir))
    try:
        return store.page(limit=100)
    finally:
        store.close()


def _refuses_connections(server: Server) -> bool:
    try:
        with server.client() as http:
            http.post(CREATE, json={"input": tiny_input(seed=9)})
    except httpx.ConnectError:
        return True
    except httpx.TransportError:  # accepted just as the listener closed
        return False
    return False


@pytest.mark.parametrize("drain", ["finishes", "times out"])
def test_sigterm_drains_the_running_job(tiny_model_dir: Path, tmp_path: Path, drain: str):
    """SIGTERM while a job runs (held at step 2 by the hook) and another waits: the server stops taking
    connections, starts no new job and waits for the held one.
    With time to drain, the job goes on (SIGCONT) and finishes before the server exits; with a drain timeout
    shorter than the held job, the worker is ended and the job goes back to the queue, and the server exits.
    A client streams the waiting job's events, so uvicorn waits its graceful timeout for that connection before the
    app's shutdown: the worker, resumed in that time, must already know not to take the waiting job."""
    timeout = "600" if drain == "finishes" else "1"
    server = Server(tmp_path / "data", args=["--model", f"tiny={tiny_model_dir}", "--test-stop-at-step", "2",
                                             "--drain-timeout", timeout])
    server.start()
    worker_pid = 0
    try:
        prediction_id, worker_pid = _paused_job(server)
        with server.client() as http:
            waiting = http.post(CREATE, json={"input": tiny_input(seed=3)}).json()["id"]
            with http.stream("GET", f"/v1/predictions/{waiting}/stream"):
                server.proc.send_signal(signal.SIGTERM)
                if drain == "finishes":
                    wait_for(lambda: _refuses_connections(server), "the server to stop taking connections")
                    assert server.proc.poll() is None and stopped(worker_pid)  # still draining the held job
                    os.kill(worker_pid, signal.SIGCONT)
                assert server.proc.wait(120) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    finally:
        release(worker_pid)
        server.stop()
    if drain == "finishes":  # the shared primitives were released at shutdown (a killed worker leaves tqdm's lock)
        assert "leaked semaphore" not in server.final_log()
    rows = _stored(server.data_dir)
    [pred] = [p for p in rows if p.id == prediction_id]
    # The waiting job, and any create answered in the moment before the listener closed: stored, never taken up.
    assert waiting in {p.id for p in rows}
    assert all(p.status == "queued" and p.started_at is None for p in rows if p.id != prediction_id)
    if drain == "finishes":
        assert pred.status == "succeeded" and pred.output
    else:
        assert pred.status == "queued" and "requeued: the server stopped" in pred.logs and pred.lease_owner is None


def test_an_unwritable_data_dir_mid_job_then_writable_again_service_resumes(tiny_model_dir: Path, tmp_path: Path):
    """The data dir (database, outputs, work files) is made immutable with chattr +i -- which stops root too --
    while a job is held at step 2; the job then goes on into the failing disk. /health leaves READY saying the
    store cannot be written, a create is refused with a 503 and no row; once the disk is writable again the held
    job ends, /health is READY again and a new job succeeds."""
    chattr = need_debian("e2fsprogs", "chattr")
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    if subprocess.run([chattr, "+i", str(probe)], capture_output=True).returncode:
        missing("chattr +i (root, on a filesystem with the immutable flag)", f"refused on {tmp_path}")
    subprocess.run([chattr, "-i", str(probe)], check=True)
    server = Server(tmp_path / "data", args=["--model", f"tiny={tiny_model_dir}", "--test-stop-at-step", "2"])
    server.start()
    frozen, worker_pid = False, 0
    try:
        prediction_id, worker_pid = _paused_job(server)
        with server.client() as http:
            before = len(http.get("/v1/predictions").json()["results"])
            subprocess.run([chattr, "-R", "+i", str(server.data_dir)], check=True)
            frozen = True
            os.kill(worker_pid, signal.SIGCONT)
            seen = wait_for(lambda: (h := http.get("/health")).status_code != 200 and h.json(),
                            "/health to leave READY")
            assert seen["status"] == "DEGRADED" and "cannot write to the store" in seen["reason"]
            refused = http.post(CREATE, json={"input": tiny_input(seed=5)})
            assert refused.status_code == 503 and "retry later" in refused.json()["detail"]
            subprocess.run([chattr, "-R", "-i", str(server.data_dir)], check=True)
            frozen = False
            held = wait_for(lambda: finished(http, prediction_id), "the held job to end")
            assert held["status"] in ("succeeded", "failed")  # failed: its work files could not be written
            wait_for(lambda: http.get("/health").status_code == 200, "/health READY again")
            assert len(http.get("/v1/predictions").json()["results"]) == before  # the refused create left no row
            assert health(server)["worker"]["pid"] == worker_pid  # the same worker, which the hook holds again
            new = http.post(CREATE, json={"input": tiny_input(seed=6)}).json()
            wait_for(lambda: stopped(worker_pid), "the hook to hold the new job too (it holds every job here)")
            os.kill(worker_pid, signal.SIGCONT)
            done = wait_for(lambda: finished(http, new["id"]), "a new job after the disk came back")
            assert done["status"] == "succeeded", done["error"]
    finally:
        if frozen:
            subprocess.run([chattr, "-R", "-i", str(server.data_dir)], check=True)
        release(worker_pid)
        server.stop()
