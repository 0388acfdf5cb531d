"""Every dialect refuses at submit, in its own error format, what the task preflight refuses."""

from __future__ import annotations

import base64

import pytest


@pytest.fixture()
def client(tmp_path, monkeypatch, tiny_model_dir):
    from fastapi.testclient import TestClient

    from vace.server.app import create_app
    from vace.server.settings import ServeSettings

    monkeypatch.delenv("VACE_SAFETY_CHECKER", raising=False)
    monkeypatch.setenv("VACE_SAFETY_UNAVAILABLE", "unchecked")
    app = create_app(ServeSettings(model=[f"tiny={tiny_model_dir}"], data_dir=tmp_path, public_url="https://h:1",
                                  no_worker=True))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_annotator_tasks_are_checked_where_the_worker_looks(tmp_path, tiny_model_dir):
    """By default the annotators beside the served model (the tiny ones here) pass at submit, in every dialect;
    with --annotators-dir pointing at an empty folder each dialect refuses naming the annotator and the folder."""
    from fastapi.testclient import TestClient

    from tests.synthetic import moving_square_frames, write_video
    from vace.server.app import create_app
    from vace.server.settings import ServeSettings

    clip = write_video(tmp_path / "clip.mp4", moving_square_frames(9, 64, 48))
    video = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    requests = [("/v1/models/vace/tiny/predictions", {"input": {"prompt": "x", "video": video, "task": "depth"}}),
                ("/queue/fal-ai/wan-vace-14b/depth", {"prompt": "x", "video_url": video, "preprocess": True,
                                                       "resolution": "240p", "aspect_ratio": "16:9"}),
                ("/api/v3/wavespeed-ai/wan-2.1-14b-vace", {"prompt": "x", "video": video, "task": "depth",
                                                           "enable_safety_checker": False})]
    for annotators_dir, accepted in ((None, True), (tmp_path / "empty", False)):
        settings = ServeSettings(model=[f"tiny={tiny_model_dir}"], data_dir=tmp_path / "data",
                                 public_url="https://h:1", no_worker=True, annotators_dir=annotators_dir)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            for path, body in requests:
                resp = client.post(path, json=body)
                if accepted:
                    assert resp.status_code in (200, 201), (path, resp.text)
                else:
                    assert resp.status_code in (400, 422) and "depth-anything-v2" in resp.text, (path, resp.text)
                    assert str(tmp_path / "empty") in resp.text, resp.text


def test_replicate_native_refuses_unknown_task_and_options_at_submit(client):
    bad_task = client.post("/v1/models/vace/tiny/predictions", json={"input": {"prompt": "x", "task": "nope"}})
    assert bad_task.status_code == 422, bad_task.text
    assert bad_task.json()["invalid_fields"][0]["field"] == "task"
    assert "unknown task 'nope'" in bad_task.json()["detail"]
    bad_option = client.post("/v1/models/vace/tiny/predictions",
                             json={"input": {"prompt": "x", "task": "t2v", "task_options": {"bogus": 1}}})
    assert bad_option.status_code == 422, bad_option.text
    assert bad_option.json()["invalid_fields"][0]["field"] == "task_options.bogus"
    ok = client.post("/v1/models/vace/tiny/predictions", json={"input": {"prompt": "x", "task": "t2v"}})
    assert ok.status_code == 201, ok.text
