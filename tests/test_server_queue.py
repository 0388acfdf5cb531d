"""Queue-only server (no worker): listing 150 predictions page by page, the queue cap, queued cancel."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server_process import Server

API_KEY = "queue-key"
QUEUE_MAX = 150


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = Server(tmp_path_factory.mktemp("queue") / "data", api_key=API_KEY,
                 args=["--model", "tiny", "--no-worker", "--queue-max", str(QUEUE_MAX)])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server):
    import replicate

    return replicate.Client(api_token=API_KEY, base_url=server.base_url)


@pytest.fixture(scope="module")
def created(client) -> list[str]:
    return [client.predictions.create(model="vace/tiny", input={"prompt": f"p{i}", "width": 32, "height": 32,
                                                                "num_frames": 5, "steps": 1}).id
            for i in range(QUEUE_MAX)]


def test_list_pages_through_150_predictions(server: Server, client, created: list[str]):
    first = client.predictions.list()
    assert len(first.results) == 100 and first.previous is None
    assert first.next.startswith(f"{server.base_url}/v1/predictions?cursor=")
    second = client.predictions.list(first.next)
    assert len(second.results) == 50 and second.next is None
    listed = [p.id for p in first.results + second.results]
    assert listed == created[::-1]  # newest first, each exactly once
    assert all(p.status == "starting" for p in first.results)
    back = client.predictions.list(second.previous)
    assert [p.id for p in back.results] == [p.id for p in first.results]


def test_full_queue_answers_429_with_retry_after(server: Server, created: list[str]):
    with server.client() as http:
        resp = http.post("/v1/models/vace/tiny/predictions", json={"input": {"prompt": "one too many"}})
    assert resp.status_code == 429
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert int(resp.headers["Retry-After"]) >= 1
    body = resp.json()
    assert body["status"] == 429 and "queue is full" in body["detail"]


def test_cancel_queued_is_immediate_and_frees_a_slot(server: Server, client, created: list[str]):
    canceled = client.predictions.cancel(created[0])
    assert canceled.status == "canceled" and canceled.completed_at
    assert client.predictions.cancel(created[0]).status == "canceled"  # terminal: unchanged
    new = client.predictions.create(model="vace/tiny", input={"prompt": "fits again"})
    assert new.status == "starting"


def test_health_ready_without_worker(server: Server):
    with server.client() as http:
        body = http.get("/health").json()
    assert body["status"] == "READY" and body["worker"]["enabled"] is False
    assert body["queue"]["queued"] == QUEUE_MAX


def test_prefer_wait_answers_starting_when_not_done(server: Server, created: list[str]):
    with server.client() as http:
        http.post(f"/v1/predictions/{created[1]}/cancel")  # make room: the queue is at its cap
        resp = http.post("/v1/models/vace/tiny/predictions", headers={"Prefer": "wait=1"},
                         json={"input": {"prompt": "nobody runs me"}})
    assert resp.status_code == 201 and resp.headers["Preference-Applied"] == "wait=1"
    assert resp.json()["status"] == "starting"


def test_cancel_after_cancels_a_waiting_prediction(server: Server, created: list[str]):
    import time

    with server.client() as http:
        http.post(f"/v1/predictions/{created[2]}/cancel")
        too_soon = http.post("/v1/models/vace/tiny/predictions", headers={"Cancel-After": "2s"},
                             json={"input": {"prompt": "x"}})
        assert too_soon.status_code == 422
        assert too_soon.json()["invalid_fields"][0]["field"] == "Cancel-After"
        pid = http.post("/v1/models/vace/tiny/predictions", headers={"Cancel-After": "5s"},
                        json={"input": {"prompt": "x"}}).json()["id"]
        assert http.get(f"/v1/predictions/{pid}").json()["status"] == "starting"
        deadline = time.monotonic() + 30
        while http.get(f"/v1/predictions/{pid}").json()["status"] != "canceled":
            assert time.monotonic() < deadline, "Cancel-After did not cancel"
            time.sleep(0.25)
        assert "Cancel-After" in http.get(f"/v1/predictions/{pid}").json()["logs"]
