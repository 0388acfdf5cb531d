"""The page's routes in-process (no worker): the server-rendered page, offline docs, /metrics auth, the page's
JSON, Replicate's urls.web and its routes at the root, the preview opt-in, and the change feed's subscription
for the whole farm."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.synthetic import solid_image
from vace.server.app import create_app
from vace.server.service.events import ChangeFeed
from vace.server.service.webhooks import webhook_events_between
from vace.server.settings import ServeSettings
from vace.server.store import PROCESSING, QUEUED, SUCCEEDED, Prediction, Store

KEY = "routes-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TINY_INPUT = {"prompt": "x", "width": 32, "height": 32, "num_frames": 5, "steps": 1}


@pytest.fixture()
def client(tiny_model_dir: Path, tmp_path: Path):
    settings = ServeSettings(model=[f"tiny={tiny_model_dir}"], data_dir=tmp_path, public_url="http://127.0.0.1:9",
                             no_worker=True, api_keys=[KEY], allow_host=["127.0.0.1"])
    with TestClient(create_app(settings)) as http:
        yield http


def _urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


def test_page_and_docs_load_nothing_from_elsewhere(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and 'data-auth-required="true"' in page.text
    assert '<option value="tiny">vace/tiny</option>' in page.text and 'value="inpainting"' in page.text
    for path in ("/", "/p/abc", "/docs", "/redoc"):
        html = client.get(path).text
        links = _urls(html) + re.findall(r"""url: ?['"]([^'"]+)['"]""", html)
        assert links and all(u.startswith(("/", "#", "data:")) for u in links), (path, links)
        assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html, path
        for url in links:
            if url.startswith("/") and not url.startswith(("/v1", "/openapi")) and "." in url.rsplit("/", 1)[-1]:
                assert client.get(url).status_code == 200, url  # every script, style and icon is served here


def test_metrics_need_the_key_unless_public(client: TestClient, tiny_model_dir: Path, tmp_path: Path):
    assert client.get("/metrics").status_code == 401
    scrape = client.get("/metrics", headers=AUTH)
    assert scrape.status_code == 200 and 'vace_queue_depth{state="queued"} 0.0' in scrape.text
    public = ServeSettings(model=[f"tiny={tiny_model_dir}"], data_dir=tmp_path / "public", public_url="http://h:1",
                           no_worker=True, api_keys=[KEY], metrics_public=True)
    with TestClient(create_app(public)) as http:
        assert http.get("/metrics").status_code == 200
        assert http.get("/web/api/predictions").status_code == 401  # only the metrics are public


def test_page_json_lists_the_queue_and_replicate_links_the_page(client: TestClient):
    created = [client.post("/v1/models/vace/tiny/predictions", json={"input": TINY_INPUT}, headers=AUTH).json()
               for _ in range(3)]
    assert created[0]["urls"]["web"] == f"http://127.0.0.1:9/p/{created[0]['id']}"
    client.post(f"/v1/predictions/{created[1]['id']}/cancel", headers=AUTH)
    active = client.get("/web/api/predictions", headers=AUTH).json()["results"]
    assert [(p["id"], p["position"], p["status"]) for p in active] == [
        (created[0]["id"], 0, QUEUED), (created[2]["id"], 1, QUEUED)]
    finished = client.get("/web/api/predictions?state=finished", headers=AUTH).json()
    assert [p["id"] for p in finished["results"]] == [created[1]["id"]] and finished["next"] is None
    one = client.get(f"/web/api/predictions/{created[2]['id']}", headers=AUTH).json()
    assert one["rerun"]["prompt"] == "x" and one["position"] == 1 and one["steps"] == 1
    assert client.get("/web/api/predictions?state=finished&cursor=x", headers=AUTH).status_code == 422
    assert client.get("/web/api/predictions?state=later", headers=AUTH).status_code == 422
    assert client.get("/web/api/events?id=nope", headers=AUTH).status_code == 404


def test_replicate_answers_at_the_root_too_and_the_page_is_at_p(client: TestClient):
    """replicate 2.x and JavaScript join /... onto their base URL: the bare host works like HOST/v1 for them."""
    png = io.BytesIO()
    solid_image(16, 16, (200, 10, 10)).save(png, "PNG")
    upload = client.post("/files", files={"content": ("ref.png", png.getvalue(), "image/png")}, headers=AUTH).json()
    assert upload["urls"]["get"] == f"http://127.0.0.1:9/v1/files/{upload['id']}"  # links stay canonical
    ref = f"http://127.0.0.1:9/files/{upload['id']}"  # the root form of this server's file URL is ours too
    made = client.post("/models/vace/tiny/predictions", json={"input": {**TINY_INPUT, "reference_images": [ref]}},
                       headers=AUTH)
    assert made.status_code == 201, made.text
    pred = made.json()
    assert pred["urls"]["get"] == f"http://127.0.0.1:9/v1/predictions/{pred['id']}"
    assert client.get(f"/predictions/{pred['id']}", headers=AUTH).json() == client.get(
        f"/v1/predictions/{pred['id']}", headers=AUTH).json()
    assert client.get(f"/replicate/predictions/{pred['id']}", headers=AUTH).json()["urls"]["get"] == \
        f"http://127.0.0.1:9/replicate/v1/predictions/{pred['id']}"
    assert client.get(f"/predictions/{pred['id']}").status_code == 401  # an API route now, not a page
    assert [p["id"] for p in client.get("/predictions", headers=AUTH).json()["results"]] == [pred["id"]]
    assert client.get("/models/vace/tiny", headers=AUTH).json()["url"] == "http://127.0.0.1:9/v1/models/vace/tiny"
    page = client.get(f"/p/{pred['id']}")
    assert page.headers["content-type"].startswith("text/html") and f'data-prediction="{pred["id"]}"' in page.text
    web = client.get(f"/web/api/predictions/{pred['id']}", headers=AUTH).json()
    assert web["page"] == f"http://127.0.0.1:9/p/{pred['id']}"
    assert web["rerun"]["reference_images"] == [upload["urls"]["get"]]
    # What else lives at the root is untouched, and the OpenAPI document lists each Replicate route once.
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert client.get("/health").json()["status"] == "READY"
    assert client.get("/metrics", headers=AUTH).text.startswith("#")
    assert client.get("/outputs/nothing.mp4").status_code == 404
    assert client.head("/outputs/nothing.mp4").status_code == 404
    download = f"/v1/files/{upload['id']}/download"
    head = client.head(download, headers=AUTH)  # the headers a GET sends, no body
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "image/png"
    assert int(head.headers["content-length"]) == len(png.getvalue()) == len(client.get(download, headers=AUTH).content)
    assert client.head(download).status_code == 401
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/predictions" in paths and "/replicate/v1/predictions" in paths
    assert not [p for p in paths if p.startswith(("/predictions", "/models", "/files", "/webhooks",
                                                  "/replicate/predictions"))]


def test_page_json_shows_each_key_only_its_own_predictions(tiny_model_dir: Path, tmp_path: Path):
    keys = {"a": "key-a", "b": "key-b", "admin": "key-admin"}
    auth = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
    settings = ServeSettings(model=[f"tiny={tiny_model_dir}"], data_dir=tmp_path, public_url="http://127.0.0.1:9",
                             no_worker=True, api_keys=[keys["a"], keys["b"]], admin_keys=[keys["admin"]])
    with TestClient(create_app(settings)) as http:
        mine = {who: [http.post("/v1/models/vace/tiny/predictions", json={"input": TINY_INPUT},
                                headers=auth[who]).json()["id"] for _ in range(2)] for who in ("a", "b")}
        http.post(f"/v1/predictions/{mine['a'][1]}/cancel", headers=auth["a"])

        def ids(who: str, state: str) -> list[str]:
            return [p["id"] for p in http.get(f"/web/api/predictions?state={state}", headers=auth[who]).json()[
                "results"]]

        assert ids("a", "active") == [mine["a"][0]] and ids("a", "finished") == [mine["a"][1]]
        assert ids("b", "active") == mine["b"] and ids("b", "finished") == []
        assert sorted(ids("admin", "active")) == sorted([mine["a"][0], *mine["b"]])
        assert ids("admin", "finished") == [mine["a"][1]]
        assert http.get(f"/web/api/predictions/{mine['a'][0]}", headers=auth["b"]).status_code == 404
        assert http.get(f"/web/api/events?id={mine['a'][0]}", headers=auth["b"]).status_code == 404


def test_preview_webhooks_need_the_opt_in(client: TestClient):
    body = {"input": TINY_INPUT, "webhook": "http://127.0.0.1:9/hook", "webhook_events_filter": ["preview"]}
    refused = client.post("/v1/models/vace/tiny/predictions", json=body, headers=AUTH)
    assert refused.status_code == 422
    assert refused.json()["invalid_fields"][0]["field"] == "webhook_events_filter"
    accepted = client.post("/v1/models/vace/tiny/predictions", json={**body, "previews": True}, headers=AUTH)
    assert accepted.status_code == 201


def _row(**values) -> Prediction:
    fields = {"id": "p1", "endpoint": "vace/tiny", "version": "", "dialect": "replicate", "model": "tiny",
              "input": {}, "request": {}, "status": PROCESSING, "started_at": 1.0, **values}
    return Prediction(**fields)


def test_a_new_preview_is_a_webhook_event_while_running():
    shown = {"step": 2, "total": 8, "image": "data:image/jpeg;base64,AA"}
    assert "preview" in webhook_events_between(_row(), _row(preview=shown, rev=2))
    assert "preview" not in webhook_events_between(_row(preview=shown), _row(preview=shown, rev=3))
    assert "preview" not in webhook_events_between(_row(preview=shown), _row(
        preview={**shown, "step": 8}, status=SUCCEEDED, rev=4))  # finished: `completed` says it
    # a job the feed first saw finished: its preview still goes out once, before `completed`
    assert webhook_events_between(_row(), _row(preview=shown, status=SUCCEEDED, rev=2)) == ["preview", "completed"]


def test_a_subscription_sees_new_and_changed_predictions(tmp_path: Path):
    feed = ChangeFeed(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), lambda prev, cur: None, lambda: None)

    async def run() -> list[tuple[str, int]]:
        with feed.subscription() as changes:
            feed.apply(_row(status=QUEUED, rev=0))  # just created
            feed.apply(_row(rev=1))
            feed.apply(_row(rev=1))  # the same revision again: nothing new
            return [(p.status, p.rev) for p in [changes.get_nowait() for _ in range(changes.qsize())]]

    assert asyncio.run(run()) == [(QUEUED, 0), (PROCESSING, 1)]
    assert not feed._subscribers


def test_pages_tell_the_browser_to_reach_this_server_only(client: TestClient):
    for path in ("/docs", "/redoc"):
        policy = client.get(path).headers["content-security-policy"]
        assert policy.startswith("default-src 'self'") and "http" not in policy, path
    for path in ("/", "/p/abc"):  # and the server's public URL, which output URLs use
        policy = client.get(path).headers["content-security-policy"]
        assert policy.startswith("default-src 'self'") and "media-src 'self' http://127.0.0.1:9;" in policy
