"""The Replicate-compatible API driven by the official `replicate` client against the real server over TLS."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.server_process import LONG_JOB, TLS, Server, cancel_between_steps, wait_until_denoising, webhook_receiver
from tests.synthetic import data_uri, moving_square_frames, solid_image, write_video
from vace.pipelines.media.codec import probe_video

API_KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("replicate-api")
    srv = Server(root / "data", tls=TLS.make(root / "tls"), api_key=API_KEY,
                 args=["--model", "tiny", "--max-render-side", "64", "--allow-host", "127.0.0.1",
                       "--queue-max", "20", "--webhook-attempts", "4"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server):
    """A replicate client configured only through the environment, as a user's code would be."""
    import replicate

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPLICATE_BASE_URL", server.base_url)
        mp.setenv("REPLICATE_API_TOKEN", API_KEY)
        mp.setenv("SSL_CERT_FILE", str(server.tls.ca_file))
        mp.setenv("REPLICATE_POLL_INTERVAL", "0.2")
        yield replicate.Client()


def small(**extra) -> dict:
    return {"prompt": "a red square", "width": 64, "height": 64, "num_frames": 9, "steps": 2, **extra}


def test_health_went_from_starting_to_ready(server: Server):
    assert server.health_seen[0] == (503, "STARTING")
    assert server.health_seen[-1] == (200, "READY")
    with server.client() as http:
        body = http.get("/health").json()
    assert body["status"] == "READY" and body["models"] == ["tiny"]
    loaded = body["worker"]["loaded"]
    assert loaded["model"] == "tiny" and loaded["offload"] == "none"  # auto on a CPU -> none
    assert loaded["levers"]["attention_backend"] == "native" and loaded["levers"]["compiled_blocks"] == 0


def test_openapi_documents_routes_and_inputs(server: Server):
    with server.client() as http:
        spec = http.get("/openapi.json").json()
    for path in ("/v1/predictions", "/replicate/v1/predictions", "/v1/models/{owner}/{name}/predictions",
                 "/v1/predictions/{prediction_id}/cancel", "/v1/files", "/v1/webhooks/default/secret", "/health"):
        assert path in spec["paths"], path
    pruna = spec["components"]["schemas"]["ReplicateInput_prunaai_vace_14b"]["properties"]
    assert len(pruna) == 12


def test_prunaai_schema_is_exact(client):
    version = client.models.get("prunaai/vace-14b").latest_version
    assert version.id == "51299232dc3d0946d5f5ed74935d85243e172698f747d291460db1e6ef3669fb"
    props = version.openapi_schema["components"]["schemas"]["Input"]["properties"]
    assert list(props) == ["prompt", "src_video", "src_mask", "src_ref_images", "size", "frame_num", "speed_mode",
                           "sample_solver", "sample_steps", "sample_guide_scale", "sample_shift", "seed"]
    assert props["size"]["enum"] == ["832*480", "480*832", "1280*720", "720*1280"]
    assert props["size"]["default"] == "832*480"
    assert props["speed_mode"]["enum"] == ["Lightly Juiced 🍊 (more consistent)", "Juiced 🔥 (more speed)",
                                           "Extra Juiced 🚀 (even more speed)"]
    assert {k: props[k]["default"] for k in ("frame_num", "sample_solver", "sample_steps", "sample_guide_scale",
                                             "sample_shift", "seed")} == {
        "frame_num": 81, "sample_solver": "unipc", "sample_steps": 50, "sample_guide_scale": 5,
        "sample_shift": 16, "seed": -1}


def test_run_prunaai_returns_file_output_of_requested_shape(client, tmp_path: Path):
    from replicate.helpers import FileOutput

    ref = data_uri(solid_image(48, 48, (200, 40, 40)))
    output = client.run("prunaai/vace-14b", input={
        "prompt": "a red ball", "src_ref_images": [ref], "size": "480*832", "frame_num": 5, "sample_steps": 2,
        "speed_mode": "Juiced 🔥 (more speed)", "seed": 7})
    assert isinstance(output, FileOutput)
    assert output.url.startswith("https://127.0.0.1:")
    path = tmp_path / "out.mp4"
    path.write_bytes(output.read())
    assert probe_video(path) | {"fps": None} == {"num_frames": 5, "width": 480, "height": 832, "fps": None}


def test_run_by_version_and_under_replicate_prefix(server: Server, client):
    from replicate.helpers import FileOutput

    pruna = "prunaai/vace-14b:bbafc615de3e3903470a335f94294810ced166309adcba307ac8692113a7b273"
    out = client.run(pruna, input={"prompt": "x", "frame_num": 5, "sample_steps": 1})
    assert isinstance(out, FileOutput)
    with server.client() as http:
        resp = http.post("/replicate/v1/models/vace/tiny/predictions", json={"input": small()},
                         headers={"Prefer": "wait=30"})
    assert resp.status_code == 201 and resp.headers["Preference-Applied"] == "wait=30"
    body = resp.json()
    assert body["status"] == "succeeded"
    assert body["urls"]["get"] == f"{server.base_url}/replicate/v1/predictions/{body['id']}"


def test_create_wait_with_a_file_uploaded_by_the_client(client, tmp_path: Path):
    video = write_video(tmp_path / "clip.mp4", moving_square_frames(9, 64, 64))
    with open(video, "rb") as fh:  # the client uploads open files through POST /v1/files
        prediction = client.predictions.create(model="vace/tiny", input=small(
            video=fh, mask=data_uri(solid_image(64, 64, (255, 255, 255))), seed=3))
    assert prediction.status == "starting"
    assert "/v1/files/" in prediction.input["video"]
    prediction.wait()
    assert prediction.status == "succeeded", prediction.error
    assert "denoising step 2/2" in prediction.logs and prediction.progress.current == 2
    assert prediction.metrics["predict_time"] > 0 and prediction.metrics["seed"] == 3
    uploaded = client.files.list()[0]
    assert uploaded.name == "clip.mp4" and uploaded.size == video.stat().st_size
    assert client.files.get(uploaded.id).checksums["sha256"] == uploaded.checksums["sha256"]
    assert client.files.delete(uploaded.id)


def test_file_metadata_as_a_text_field_or_a_file_part(server: Server):
    """The JavaScript client sends `metadata` as a JSON file part; Python clients as a text field."""
    import json

    with server.client() as http:
        as_text = http.post("/v1/files", files={"content": ("a.txt", b"one", "text/plain")},
                            data={"metadata": json.dumps({"k": 1})})
        as_part = http.post("/v1/files", files={"content": ("b.txt", b"two", "text/plain"),
                                             "metadata": ("blob", json.dumps({"k": 2}).encode(), "application/json")})
        assert (as_text.status_code, as_part.status_code) == (201, 201), (as_text.text, as_part.text)
        assert as_text.json()["metadata"] == {"k": 1} and as_part.json()["metadata"] == {"k": 2}
        bad = http.post("/v1/files", files={"content": ("c.txt", b"3"),
                                         "metadata": ("blob", b"{nope", "application/json")})
        assert bad.status_code == 422 and bad.json()["invalid_fields"][0]["field"] == "metadata"
        assert http.get(f"/v1/files/{as_part.json()['id']}").json()["metadata"] == {"k": 2}
        assert http.delete(f"/v1/files/{as_text.json()['id']}").status_code == 204


def test_annotator_task_on_a_default_tiny_server(client, tmp_path: Path):
    """vace/<model> with task depth: the annotator weights beside the tiny model are found at submit and run."""
    video = write_video(tmp_path / "clip.mp4", moving_square_frames(9, 64, 64))
    with open(video, "rb") as fh:
        prediction = client.predictions.create(model="vace/tiny", input=small(video=fh, task="depth"))
    prediction.wait()
    assert prediction.status == "succeeded", prediction.error


def test_cancel_running_prediction_stops_between_steps(client):
    prediction = client.predictions.create(model="vace/tiny", input=small(**LONG_JOB))
    wait_until_denoising(prediction, timeout=60)
    assert prediction.status == "processing"
    cancel_between_steps(prediction, LONG_JOB["steps"])


def test_stream_events(client):
    prediction = client.predictions.create(model="vace/tiny", input=small(), stream=True)
    events = list(prediction.stream())
    kinds = [e.event.value for e in events]
    assert kinds[-1] == "done" and "output" in kinds and "logs" in kinds
    assert str([e for e in events if e.event.value == "output"][0].data).endswith(f"/outputs/{prediction.id}.mp4")


def test_webhooks_start_output_completed_signed(server: Server, client):
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    with server.client() as http_client:
        secret = http_client.get("/v1/webhooks/default/secret").json()["key"]
    assert secret.startswith("whsec_")
    with webhook_receiver(fail_first=1) as hook:  # the first delivery fails: it must be retried
        prediction = client.predictions.create(
            model="vace/tiny", input=small(), webhook=hook.url, webhook_events_filter=["start", "output", "completed"])
        prediction.wait()
        received = hook.wait(3)
        time.sleep(0.5)  # nothing more may arrive
    bodies = [Webhook(secret).verify(body, headers) for headers, body in received]
    assert [b["status"] for b in bodies] == ["processing", "succeeded", "succeeded"]  # start, output, completed
    assert bodies[0]["output"] is None and bodies[1]["output"] == bodies[2]["output"] is not None
    assert all(b["id"] == prediction.id for b in bodies)
    with pytest.raises(WebhookVerificationError):  # a wrong secret does not verify
        Webhook("whsec_" + "A" * 43 + "=").verify(received[0][1], received[0][0])


def _assert_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_errors_are_rfc7807(server: Server, client):
    import replicate

    with server.client() as http:
        http.headers["Authorization"] = "Bearer wrong"
        _assert_problem(http.get("/v1/predictions"), 401)
        del http.headers["Authorization"]
        _assert_problem(http.get("/v1/predictions"), 401)
    with server.client() as http:
        _assert_problem(http.get("/v1/predictions/doesnotexist"), 404)
        _assert_problem(http.get("/replicate/v1/models/nobody/nothing"), 404)
        body = _assert_problem(http.post("/v1/models/prunaai/vace-14b/predictions", json={"input": {
            "prompt": "x", "size": "64*64", "frame_num": "many", "sample_solver": "euler", "extra": 1}}), 422)
        assert {f["field"] for f in body["invalid_fields"]} == {"size", "frame_num", "sample_solver", "extra"}
        body = _assert_problem(http.post("/v1/models/prunaai/vace-14b/predictions", json={"input": {
            "prompt": "x", "sample_guide_scale": 50}}), 422)
        assert body["invalid_fields"][0]["field"] == "sample_guide_scale"  # range check, in the client's name
        body = _assert_problem(http.post("/v1/models/vace/tiny/predictions", json={"input": small(
            video="http://10.1.2.3/private.mp4")}), 422)
        assert body["invalid_fields"][0]["field"] == "video"
        body = _assert_problem(http.post("/v1/models/vace/tiny/predictions", json={"input": small(
            video="/etc/passwd")}), 422)
        assert body["invalid_fields"][0]["field"] == "video"
    with pytest.raises(replicate.exceptions.ReplicateError) as err:
        client.predictions.create(model="prunaai/vace-14b", input={"prompt": "x", "size": "1*1"})
    assert err.value.status == 422


def test_malformed_urls_and_cursors_are_problems_not_500(server: Server):
    import base64

    too_big = base64.urlsafe_b64encode(b"b:99999999999999999999999").decode().rstrip("=")
    with server.client() as http:
        body = _assert_problem(http.post("/v1/models/vace/tiny/predictions", json={"input": small(
            video="http://[::1")}), 422)
        assert body["invalid_fields"][0]["field"] == "video" and "malformed URL" in body["detail"]
        body = _assert_problem(http.post("/v1/models/vace/tiny/predictions", json={
            "input": small(), "webhook": "https://example.com:99999/hook"}), 422)
        assert body["invalid_fields"][0]["field"] == "webhook"
        body = _assert_problem(http.get("/v1/predictions", params={"cursor": too_big}), 422)
        assert body["invalid_fields"][0]["field"] == "cursor"
        body = _assert_problem(http.post("/v1/models/vace/tiny/predictions", content=b"{not json",
                                         headers={"content-type": "application/json"}), 422)
        assert body["invalid_fields"][0]["field"] == "body"
