"""A request whose interpolator or prompt extender weights are missing is refused at submit (422, in each
dialect's format, naming the folder and the fetch command) and nothing is queued."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def client(tmp_path: Path, tiny_model_dir: Path):
    from fastapi.testclient import TestClient

    from vace.server.app import create_app
    from vace.server.settings import ServeSettings

    settings = ServeSettings(model=[f"tiny={tiny_model_dir}"], data_dir=tmp_path / "data", public_url="https://h:1",
                             no_worker=True, safety_unavailable="unchecked", interpolators=tmp_path / "interp",
                             prompt_extender=tmp_path / "llm", prompt_extender_vl=tmp_path / "vl")
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def queued(client) -> int:
    return client.app.state.service.store.count_active()["queued"]


@pytest.mark.parametrize("fields,loc,folder,fetch", [
    ({"num_interpolated_frames": 2}, "interpolator_model", "interp/film", "film_net_fp32.pt"),
    ({"num_interpolated_frames": 1, "interpolator_model": "rife"}, "interpolator_model", "interp/rife",
     "Practical-RIFE"),
    ({"temporal_downsample_factor": 1}, "interpolator_model", "interp/film", "film_net_fp32.pt"),
    ({"enable_auto_downsample": True}, "interpolator_model", "interp/film", "film_net_fp32.pt"),
    ({"enable_prompt_expansion": True}, "enable_prompt_expansion", "llm", "Qwen/Qwen2.5-7B-Instruct"),
])
def test_fal_refuses_missing_helper_weights(client, tmp_path, fields, loc, folder, fetch):
    resp = client.post("/queue/fal-ai/wan-vace-14b", json={"prompt": "a fox", **fields})
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"][0]
    assert detail["loc"] == ["body", loc]
    assert str(tmp_path / folder) in detail["msg"] and fetch in detail["msg"]
    assert queued(client) == 0


def test_replicate_native_schema_refuses_them_too(client, tmp_path):
    resp = client.post("/v1/models/vace/tiny/predictions", json={"input": {"prompt": "x", "interpolated_frames": 2}})
    assert resp.status_code == 422, resp.text
    assert resp.json()["invalid_fields"][0]["field"] == "interpolator"
    assert str(tmp_path / "interp" / "film") in resp.json()["detail"]
    resp = client.post("/v1/models/vace/tiny/predictions", json={"input": {"prompt": "x", "expand_prompt": True}})
    assert resp.status_code == 422 and resp.json()["invalid_fields"][0]["field"] == "expand_prompt"
    assert queued(client) == 0
    assert client.post("/v1/models/vace/tiny/predictions", json={"input": {"prompt": "x"}}).status_code == 201
