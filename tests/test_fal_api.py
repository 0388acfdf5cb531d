"""The fal dialect driven by the official `fal-client` against the real server over TLS."""

from __future__ import annotations

import base64
import importlib
import json
import ssl
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.server_process import TLS, Server, webhook_receiver
from tests.synthetic import moving_square_frames, write_video
from vace.pipelines.media.codec import probe_video

API_KEY = "fal-test-key"
APP = "fal-ai/wan-vace-14b"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tiny_a14b_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fal-api")
    with pytest.MonkeyPatch.context():  # the tiny safety checker is a tiny server's default
        srv = Server(root / "data", tls=TLS.make(root / "tls"), api_key=API_KEY,
                     args=["--model", "tiny", "--model", "tiny-a14b", "--max-render-side", "32",
                           "--allow-host", "127.0.0.1"])
        srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fal(server: Server):
    """fal_client configured only through the environment (its hosts are read at import time)."""
    host = f"127.0.0.1:{server.port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAL_RUN_HOST", host)
        mp.setenv("FAL_QUEUE_RUN_HOST", f"{host}/queue")
        mp.setenv("FAL_KEY", API_KEY)
        mp.setenv("SSL_CERT_FILE", str(server.tls.ca_file))
        import fal_client
        import fal_client.auth
        import fal_client.client

        importlib.reload(fal_client.auth)
        importlib.reload(fal_client.client)
        importlib.reload(fal_client)
        assert fal_client.client.QUEUE_URL_FORMAT == f"https://{host}/queue/"
        yield fal_client.SyncClient(key=API_KEY)


@pytest.fixture(scope="module")
def control_video(tmp_path_factory) -> str:
    path = write_video(tmp_path_factory.mktemp("media") / "control.mp4", moving_square_frames(9, 64, 48), fps=8)
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def ca(server: Server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.tls.ca_file))


def small(**extra) -> dict:
    return {"prompt": "a red square", "resolution": "240p", "aspect_ratio": "16:9", "num_frames": 17,
            "frames_per_second": 8, "num_inference_steps": 2, "acceleration": "none", **extra}


def fetch(server: Server, url: str, tmp_path: Path, name: str = "out.mp4") -> Path:
    with server.client() as http:
        resp = http.get(url)
    assert resp.status_code == 200, resp.text
    path = tmp_path / name
    path.write_bytes(resp.content)
    return path


def rows(server: Server, prediction_id: str) -> int:
    from vace.server.store import Store, database_url

    store = Store(database_url(server.data_dir))
    try:
        return sum(1 for p in store.page(limit=1000) if p.id == prediction_id)
    finally:
        store.close()


def test_subscribe_depth_control_video_returns_a_matching_videofile(fal, server, control_video, tmp_path):
    logs = []
    result = fal.subscribe(f"{APP}/depth", small(video_url=control_video, preprocess=False, seed=11,
                                                 return_frames_zip=True, video_quality="low"),
                           with_logs=True, on_queue_update=logs.append)
    video = result["video"]
    assert result["seed"] == 11 and result["prompt"] == "a red square"
    assert (video["width"], video["height"], video["num_frames"], video["fps"]) == (416, 240, 17, 8)
    assert video["content_type"] == "video/mp4" and video["url"].startswith(server.base_url)
    assert video["duration"] == pytest.approx(17 / 8)
    path = fetch(server, video["url"], tmp_path)
    assert path.stat().st_size == video["file_size"]
    assert probe_video(path) == {"num_frames": 17, "width": 416, "height": 240, "fps": 8.0}
    from vace.pipelines.media.frames_zip import read_frames_zip

    zipped = read_frames_zip(fetch(server, result["frames_zip"]["url"], tmp_path, "frames.zip"))
    assert zipped.shape == (17, 240, 416, 3) and result["frames_zip"]["content_type"] == "application/zip"
    assert any("step" in entry["message"] for status in logs for entry in (getattr(status, "logs", None) or []))


def test_submit_status_logs_queue_position_cancel_and_both_url_forms(fal, server, control_video):
    import fal_client

    long = fal.submit(f"{APP}/pose", small(video_url=control_video, num_inference_steps=50, seed=1))
    waiting = fal.submit(f"{APP}/pose", small(video_url=control_video, seed=2))
    assert f"/queue/{APP}/pose/requests/{long.request_id}" in long.status_url
    status = waiting.status(with_logs=True)
    assert isinstance(status, fal_client.Queued) and status.position >= 0
    deadline = time.monotonic() + 120
    while True:  # the long one runs and reports denoising steps
        status = long.status(with_logs=True)
        if isinstance(status, fal_client.InProgress) and any("denoising step" in e["message"]
                                                             for e in status.logs or []):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    queued = waiting.status(with_logs=False)
    assert isinstance(queued, fal_client.Queued) and queued.position == 0
    # the client's own URLs drop the endpoint sub-path; both forms answer
    by_app = fal.get_handle(APP, long.request_id)
    assert "/pose/" not in by_app.status_url and isinstance(by_app.status(), fal_client.InProgress)
    long.cancel()
    deadline = time.monotonic() + 60
    while not isinstance(status := long.status(with_logs=True), fal_client.Completed):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status.error_type == "request_cancelled"
    with pytest.raises(fal_client.client.FalClientHTTPError):
        long.get()
    with httpx.Client(verify=ca(server), headers={"Authorization": f"Key {API_KEY}"}) as http:
        again = http.put(long.cancel_url)
        assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}
        missing = http.put(f"{server.base_url}/queue/{APP}/requests/nope/cancel")
        assert missing.status_code == 404 and missing.json() == {"status": "NOT_FOUND"}
    result = waiting.get()
    assert result["seed"] == 2
    same = fal.get_handle(APP, waiting.request_id).get()
    assert same == result
    assert rows(server, waiting.request_id) == 1


def test_pose_with_preprocess_runs_the_annotator_on_a_default_tiny_server(fal, server, control_video):
    """fal's full /pose example (preprocess: the DWPose annotator) on the annotators beside the tiny model."""
    handle = fal.submit(f"{APP}/pose", small(video_url=control_video, preprocess=True))
    assert handle.get()["video"]["num_frames"] == 17
    logs = handle.status(with_logs=True).logs
    assert any("denoising step" in e["message"] for e in logs)
    stamps = [e["timestamp"] for e in logs]
    assert stamps == sorted(stamps) and len(set(stamps)) > 1  # every line carries the time it was written


def test_run_sync_mode_returns_a_data_uri_and_keeps_no_history(fal, server, control_video, tmp_path):
    result = fal.run(f"{APP}/depth", small(video_url=control_video, sync_mode=True))
    url = result["video"]["url"]
    assert url.startswith("data:video/mp4;base64,")
    path = tmp_path / "sync.mp4"
    path.write_bytes(base64.b64decode(url.split(",", 1)[1]))
    assert probe_video(path)["num_frames"] == result["video"]["num_frames"] == 17
    plain = fal.run(f"{APP}", small(prompt="text only", num_frames=17))  # base endpoint: text-to-video
    assert plain["video"]["url"].startswith("https://") and (plain["video"]["width"], plain["video"]["height"]) == \
        (416, 240)


def test_wan22_endpoint_runs_on_the_two_expert_model(fal, server, control_video):
    handle = fal.submit("fal-ai/wan-22-vace-fun-a14b/depth", small(video_url=control_video))
    handle.get()
    status = handle.status(with_logs=True)
    assert any("model: tiny-a14b" in e["message"] for e in status.logs)


def test_validation_errors_auth_and_webhook(server, control_video):
    with webhook_receiver() as hook:
        with httpx.Client(base_url=server.base_url, verify=ca(server), timeout=30,
                          headers={"Authorization": f"Key {API_KEY}"}) as api:
            bad = api.post(f"/queue/{APP}/depth", json=small(video_url=control_video, num_frames=500,
                                                               sampler="ddim", num_interpolated_frames=6))
            assert bad.status_code == 422
            locs = {tuple(d["loc"]) for d in bad.json()["detail"]}
            assert locs == {("body", "num_frames"), ("body", "sampler"), ("body", "num_interpolated_frames")}
            assert api.post(f"/queue/{APP}/depth", json=small(video_url=control_video),
                             headers={"Authorization": "Key wrong"}).status_code == 401
            assert api.post(f"/queue/{APP}/depth", json=small(video_url="file:///etc/passwd")).status_code == 422
            sub = api.post(f"/queue/{APP}/depth", params={"fal_webhook": hook.url},
                            json=small(video_url=control_video, enable_safety_checker=True))
            assert sub.status_code == 200 and sub.json()["status"] == "IN_QUEUE"
            request_id = sub.json()["request_id"]
            stream = api.get(f"/queue/{APP}/requests/{request_id}/status/stream", params={"logs": 1})
            statuses = [json.loads(line[5:]) for line in stream.text.splitlines() if line.startswith("data:")]
            assert statuses[-1]["status"] == "COMPLETED" and statuses[-1]["metrics"]["inference_time"] > 0
        received = [json.loads(body) for _, body in hook.wait(1)]
        assert received and received[0]["request_id"] == request_id
        assert received[0]["status"] == "OK"  # the tiny checker is calibrated to call the tiny model's noise safe
        assert received[0]["payload"]["video"]["num_frames"] == 17


def test_wan22_without_a_two_expert_model_names_it(tiny_model_dir):
    from vace.server.api.models import ModelUnavailable, pick_model

    assert pick_model({"tiny": str(tiny_model_dir)}, False, APP) == "tiny"
    with pytest.raises(ModelUnavailable, match="Wan2.2-VACE-Fun-A14B"):
        pick_model({"tiny": str(tiny_model_dir)}, True, "fal-ai/wan-22-vace-fun-a14b")


# ---- frame interpolation, temporal downsampling, prompt expansion (tiny helpers beside the tiny model) -----------


def job_metrics(server: Server, request_id: str) -> dict:
    from vace.server.store import Store, database_url

    store = Store(database_url(server.data_dir))
    try:
        return store.get(request_id).metrics
    finally:
        store.close()


def video_data_uri(tmp_path: Path, frames: int, fps: int) -> str:
    path = write_video(tmp_path / f"in-{frames}.mp4", moving_square_frames(frames, 32, 32, size=8, step=1), fps=fps)
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("interpolator", ["rife", "film"])
def test_interpolated_frames_keep_the_duration(fal, server, tmp_path, interpolator):
    handle = fal.submit(APP, small(num_interpolated_frames=2, interpolator_model=interpolator, seed=3))
    result = handle.get()
    video = result["video"]
    assert (video["num_frames"], video["fps"]) == (49, 24) and video["duration"] == pytest.approx(49 / 24)
    path = fetch(server, video["url"], tmp_path)
    assert probe_video(path) == {"num_frames": 49, "width": 416, "height": 240, "fps": 24.0}
    from vace.pipelines.media.codec import load_video

    frames = load_video(path, "out").frames.astype(np.float32) / 255
    for i in range(1, 48):
        if i % 3:  # each made frame differs from both neighbours in the file written
            assert np.abs(frames[i] - frames[i - 1]).mean() > 0.5 / 255, i
            assert np.abs(frames[i] - frames[i + 1]).mean() > 0.5 / 255, i
    metrics = job_metrics(server, handle.request_id)
    assert (metrics["interpolator"], metrics["rendered_frames"], metrics["interpolated_frames"]) == \
        (interpolator, 17, 2)
    logs = [e["message"] for e in handle.status(with_logs=True).logs]
    assert "interpolating 16/16" in logs


def test_temporal_downsampling_renders_half_and_returns_the_input_length(fal, server, tmp_path):
    handle = fal.submit(f"{APP}/depth", small(video_url=video_data_uri(tmp_path, 33, 16), preprocess=False,
                                              num_frames=33, frames_per_second=16, temporal_downsample_factor=1))
    video = handle.get()["video"]
    assert (video["num_frames"], video["fps"]) == (33, 16)
    assert probe_video(fetch(server, video["url"], tmp_path))["num_frames"] == 33
    metrics = job_metrics(server, handle.request_id)
    assert (metrics["temporal_downsample_factor"], metrics["rendered_frames"]) == (1, 17)


def test_auto_downsampling_picks_the_factor_from_the_input_fps(fal, server, tmp_path):
    handle = fal.submit(f"{APP}/depth", small(video_url=video_data_uri(tmp_path, 161, 30), preprocess=False,
                                              match_input_num_frames=True, match_input_frames_per_second=True,
                                              enable_auto_downsample=True, auto_downsample_min_fps=15))
    video = handle.get()["video"]
    assert (video["num_frames"], video["fps"]) == (161, 30)
    assert probe_video(fetch(server, video["url"], tmp_path))["num_frames"] == 161
    metrics = job_metrics(server, handle.request_id)
    assert (metrics["temporal_downsample_factor"], metrics["rendered_frames"]) == (1, 81)


def test_prompt_expansion_returns_the_rewrite_the_render_used(fal, server):
    sent = small(prompt="a red square", num_frames=17, enable_prompt_expansion=True, seed=21)
    first, second = fal.submit(APP, sent), fal.submit(APP, sent)
    expanded = first.get()["prompt"]
    assert expanded and expanded != "a red square"
    assert second.get()["prompt"] == expanded  # the tiny Qwen2 samples with the job's seed
    metrics = job_metrics(server, first.request_id)
    assert metrics["expanded_prompt"] == expanded and metrics["original_prompt"] == "a red square"
    logs = [e["message"] for e in first.status(with_logs=True).logs]
    assert "expanding prompt" in logs and f"expanded prompt: {expanded}" in logs
