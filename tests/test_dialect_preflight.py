"""Every dialect refuses at submit, in its own error format, what the task preflight refuses."""

from __future__ import annotations

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
