"""The WaveSpeed v3 dialect against the real server: upload, submit + poll, sync mode, v3 webhooks, errors."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.server_process import TLS, Server, webhook_receiver
from tests.synthetic import moving_square_frames, solid_image, write_video
from vace.pipelines.media.codec import probe_video

API_KEY = "ws-test-key"
MODEL = "/api/v3/wavespeed-ai/wan-2.1-14b-vace"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("wavespeed-api")
    with pytest.MonkeyPatch.context() as mp:  # no classifier (not even the tiny one): the operator serves unchecked
        mp.setenv("VACE_SAFETY_CHECKER", "none")
        mp.setenv("VACE_SAFETY_UNAVAILABLE", "unchecked")
        srv = Server(root / "data", tls=TLS.make(root / "tls"), api_key=API_KEY,
                     args=["--model", "tiny", "--max-render-side", "32", "--allow-host", "127.0.0.1"])
        srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(server: Server):
    with httpx.Client(base_url=server.base_url, verify=ssl.create_default_context(cafile=str(server.tls.ca_file)),
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
        yield client


def upload(api: httpx.Client, name: str, data: bytes, ctype: str) -> str:
    resp = api.post("/api/v3/media/upload/binary", files={"file": (name, data, ctype)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["code"] == 200 and body["data"]["size"] == len(data) and body["data"]["filename"] == name
    return body["data"]["download_url"]


@pytest.fixture(scope="module")
def media(api, tmp_path_factory) -> dict:
    video = write_video(tmp_path_factory.mktemp("m") / "in.mp4", moving_square_frames(9, 64, 48), fps=16)
    buf = io.BytesIO()
    solid_image(32, 32, (200, 40, 40)).save(buf, format="PNG")
    return {"video": upload(api, "in.mp4", video.read_bytes(), "video/mp4"),
            "image": upload(api, "ref.png", buf.getvalue(), "image/png")}


def example(**extra) -> dict:
    """WaveSpeed's documented request, with small steps."""
    return {"prompt": "a red square slides", "negative_prompt": "", "duration": 5, "size": "832*480",
            "num_inference_steps": 2, "guidance_scale": 5, "flow_shift": 16, "context_scale": 1, "seed": -1,
            "enable_safety_checker": True, **extra}


def test_submit_and_poll_result(api, server, media, tmp_path):
    resp = api.post(MODEL, json=example(video=media["video"], task="none", images=[media["image"]]))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["code"] == 200 and body["message"] == "success"
    data = body["data"]
    assert data["status"] == "created" and data["model"] == "wavespeed-ai/wan-2.1-14b-vace"
    assert data["urls"]["get"] == f"{server.base_url}/api/v3/predictions/{data['id']}/result"
    deadline = time.monotonic() + 240
    while data["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
        data = api.get(f"/api/v3/predictions/{data['id']}/result").json()["data"]
    assert data["status"] == "completed", data
    assert data["error"] == "" and data["timings"]["inference"] > 0 and len(data["outputs"]) == 1
    assert data["has_nsfw_contents"] == [] and "not checked" in data["safety_checker"]  # never claimed checked
    assert api.get(f"/api/v3/predictions/{data['id']}").json()["data"] == data
    video = tmp_path / "out.mp4"
    video.write_bytes(api.get(data["outputs"][0]).content)
    assert probe_video(video) == {"num_frames": 81, "width": 832, "height": 480, "fps": 16.0}
    from vace.server.store import Store, database_url

    store = Store(database_url(server.data_dir))
    assert [p.dialect for p in store.page(limit=1000) if p.id == data["id"]] == ["wavespeed"]
    store.close()
    assert api.get(f"/queue/fal-ai/wan-vace-14b/requests/{data['id']}").status_code == 404  # not a fal request


def test_documented_default_task_depth_runs_the_annotator(api, server, media):
    """WaveSpeed's default task is depth: the annotator runs on `video` with the weights beside the tiny model
    (checked at submit where the worker will look for them)."""
    resp = api.post(MODEL, json=example(video=media["video"]))
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    deadline = time.monotonic() + 600
    while data["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
        data = api.get(f"/api/v3/predictions/{data['id']}/result").json()["data"]
    assert data["status"] == "completed", data
    from vace.server.store import Store, database_url

    store = Store(database_url(server.data_dir))
    stored = store.get(data["id"])
    store.close()
    assert stored.job.request.task == "depth" and stored.job.request.task_options == {"preprocess": True}


def test_sync_mode_and_signed_webhook(api, server, media):
    with webhook_receiver() as hook:
        resp = api.post(MODEL, params={"webhook": hook.url},
                        json=example(images=[media["image"]], enable_sync_mode=True, seed=5, size="480*832"))
        data = resp.json()["data"]
        assert resp.status_code == 200 and data["status"] == "completed" and len(data["outputs"]) == 1
        headers, raw = hook.wait(1)[0]
        secret = api.get("/api/v3/webhook/secret").json()["data"]["secret"]
        key = secret.removeprefix("whsec_").encode()
        expected = hmac.new(key, f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + raw,
                            hashlib.sha256).hexdigest()
        assert headers["webhook-signature"] == f"v3,{expected}"
        assert json.loads(raw)["id"] == data["id"] and json.loads(raw)["status"] == "completed"


def test_errors_use_the_envelope(api, server):
    bad = api.post(MODEL, json=example(duration=11))
    assert bad.status_code == 400 and bad.json()["code"] == 400 and "duration" in bad.json()["message"]
    assert bad.json()["data"] is None
    bad = api.post(MODEL, json=example(task="canny"))
    assert bad.status_code == 400 and "task" in bad.json()["message"]
    denied = api.post(MODEL, json=example(), headers={"Authorization": "Bearer nope"})
    assert denied.status_code == 401 and denied.json()["code"] == 401
    missing = api.get("/api/v3/predictions/nope/result")
    assert missing.status_code == 404 and missing.json()["code"] == 404
    mistyped = api.post("/api/v3/wavespeed-ai/wan-2.1/vace", json=example())  # no such model: the envelope too
    assert mistyped.status_code == 404 and mistyped.json() == {
        "code": 404, "message": "no endpoint at /api/v3/wavespeed-ai/wan-2.1/vace", "data": None}


def test_refuse_policy_without_a_classifier(tmp_path, monkeypatch, tiny_model_dir):
    from fastapi.testclient import TestClient

    from vace.server.app import create_app
    from vace.server.settings import ServeSettings

    monkeypatch.delenv("VACE_SAFETY_CHECKER", raising=False)
    monkeypatch.setenv("VACE_SAFETY_UNAVAILABLE", "refuse")
    app = create_app(ServeSettings(model=[f"tiny={tiny_model_dir}"], data_dir=tmp_path, public_url="https://h:1",
                                  no_worker=True))
    with TestClient(app) as client:
        resp = client.post(MODEL, json=example())
        assert resp.status_code == 400 and "enable_safety_checker" in resp.json()["message"]
        fal = client.post("/queue/fal-ai/wan-vace-14b", json={"prompt": "x", "enable_safety_checker": True})
        assert fal.status_code == 422 and fal.json()["detail"][0]["loc"] == ["body", "enable_safety_checker"]
        ok = client.post(MODEL, json=example(enable_safety_checker=False))
        assert ok.status_code == 200 and ok.json()["data"]["status"] == "created"
