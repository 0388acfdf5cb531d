"""LoRAs through the live server with the official replicate client on vace/tiny: a library LoRA, preset turbo
with the tiny distill, GET /v1/loras, and a LoRA for another model refused at submit with nothing queued."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.server_process import Server
from vace.pipelines.fixtures.tiny_loras import TINY_DISTILL, TINY_STYLE, write_lora, write_tiny_loras

API_KEY = "lora-key-1"
EXTRA_JUICED = "Extra Juiced 🚀 (even more speed)"  # mapped onto preset turbo by this server's --turbo-for


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lora-server")
    write_tiny_loras(root / "loras")
    write_lora(root / "loras" / "wide.safetensors", "comfy", seed=3, dim=48)  # made for a wider model
    srv = Server(root / "data", api_key=API_KEY,
                 args=["--model", "tiny", "--max-render-side", "64", "--lora-dir", str(root / "loras"),
                       "--turbo-for", f"replicate:{EXTRA_JUICED}", "--turbo-for", "fal:regular"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server):
    import replicate

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPLICATE_API_TOKEN", API_KEY)
        mp.setenv("REPLICATE_POLL_INTERVAL", "0.2")
        yield replicate.Client(base_url=server.base_url)


def small(**extra) -> dict:
    return {"prompt": "a red square", "width": 32, "height": 32, "num_frames": 5, "steps": 2, "seed": 3, **extra}


def test_library_is_listed_with_auth(server: Server):
    with server.client() as http:
        listing = http.get("/v1/loras").json()
        del http.headers["Authorization"]
        assert http.get("/v1/loras").status_code == 401
    entries = {e["name"]: e for e in listing["loras"]}
    assert set(entries) == {TINY_STYLE, f"{TINY_STYLE}-comfy", f"{TINY_STYLE}-kohya", TINY_DISTILL, "wide"}
    assert entries[TINY_STYLE]["fits"] == ["tiny"] and entries["wide"]["fits"] == []
    assert entries["wide"]["base_model"]["width"] == 48 and len(entries["wide"]["sha256"]) == 64
    assert entries[f"{TINY_STYLE}-kohya"]["format"] == "kohya" and entries[TINY_STYLE]["size"] > 0
    assert listing["distill"] == {"lora": TINY_DISTILL, "steps": 4, "guidance": 1.0, "shift": 5.0,
                                  "sampler": "dpm++"}


def test_lora_and_turbo_jobs_run(client):
    styled = client.predictions.create(model="vace/tiny", input=small(loras=[{"name": TINY_STYLE, "scale": 0.8}]))
    turbo = client.predictions.create(model="vace/tiny", input=small(preset="turbo", steps=30))
    styled.wait()
    turbo.wait()
    assert styled.status == "succeeded", styled.error
    assert f"loras: {TINY_STYLE} x0.8" in styled.logs and "2/2" in styled.logs
    assert turbo.status == "succeeded", turbo.error
    # no 30-step progress line ("done in 0.30s" may hold the digits 30)
    assert f"loras: {TINY_DISTILL} x1" in turbo.logs and "4/4" in turbo.logs and "/30" not in turbo.logs


def test_a_mapped_hosted_speed_runs_the_distill_recipe(server: Server, client):
    """prunaai's fastest speed_mode, mapped with --turbo-for, runs turbo: the tiny distill at 4 steps and 4
    transformer evaluations (no CFG pass), whatever sample_steps says."""
    pred = client.predictions.create(model="prunaai/vace-14b", input={
        "prompt": "a red square", "frame_num": 5, "sample_steps": 30, "seed": 3, "speed_mode": EXTRA_JUICED})
    pred.wait()
    assert pred.status == "succeeded", pred.error
    assert f"loras: {TINY_DISTILL} x1" in pred.logs and "4/4" in pred.logs
    with server.client() as http:
        seen = http.get(f"/web/api/predictions/{pred.id}", params={"preview": "false"}).json()
        assert seen["transformer_evaluations"] == 4 and [r["lora"] for r in seen["loras"]] == [TINY_DISTILL]
        # fal's default acceleration, mapped too; its documented default stays `regular` on the wire
        queued = http.post("/queue/fal-ai/wan-vace-14b", json={"prompt": "a red square", "num_frames": 17,
                                                               "resolution": "240p", "num_inference_steps": 2})
        assert queued.status_code == 200, queued.text
        fal_id = queued.json()["request_id"]
        for _ in range(600):  # bounded wait for the tiny render
            seen = http.get(f"/web/api/predictions/{fal_id}", params={"preview": "false"}).json()
            if seen["status"] in ("succeeded", "failed", "canceled"):
                break
            time.sleep(0.2)
    assert seen["status"] == "succeeded", seen["error"]
    assert seen["input"].get("acceleration") is None and seen["rerun"]["preset"] == "turbo"
    assert seen["transformer_evaluations"] == 4 and [r["lora"] for r in seen["loras"]] == [TINY_DISTILL]


def test_lora_for_another_model_or_a_server_path_is_refused_at_submit(server: Server, client):
    import replicate

    before = len(client.predictions.list().results)
    details = {}
    for lora, field in (({"name": "wide"}, "loras[0].name"), ({"path": "/etc/passwd"}, "loras[0].path"),
                        ({"name": "missing"}, "loras[0].name"), ({"name": TINY_STYLE, "expert": "low_noise"},
                                                                 "loras[0].expert")):
        with pytest.raises(replicate.exceptions.ReplicateError) as err:
            client.predictions.create(model="vace/tiny", input=small(loras=[lora]))
        assert err.value.status == 422
        with server.client() as http:
            body = http.post("/v1/models/vace/tiny/predictions", json={"input": small(loras=[lora])}).json()
        assert body["invalid_fields"][0]["field"] == field, body
        details[lora.get("name") or lora.get("path")] = body["invalid_fields"][0]["description"]
    assert "does not fit model tiny" in details["wide"] and "width 48" in details["wide"]
    assert len(client.predictions.list().results) == before
