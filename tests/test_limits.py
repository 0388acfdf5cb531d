"""server.limits: body size, JSON depth and unstorable text refused before a route runs, in the app's format."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request, UploadFile
from fastapi.testclient import TestClient

from vace.server.limits import MB, Limits, RequestLimits, check_json
from vace.server.problems import service_problem
from vace.server.service.errors import InvalidInput

LIMITS = Limits(max_body_bytes=MB, max_upload_bytes=2 * MB, max_json_depth=8)


@pytest.fixture()
def client() -> TestClient:
    app = FastAPI()
    app.state.calls = 0

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        app.state.calls += 1
        return {"received": await request.json()}

    @app.post("/upload")
    async def upload(content: UploadFile) -> dict:
        app.state.calls += 1
        return {"size": len(await content.read())}

    app.add_middleware(RequestLimits, limits=LIMITS, render=lambda request, exc: service_problem(exc))
    return TestClient(app)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_valid_body_reaches_the_route_unchanged(client):
    body = {"input": {"prompt": "a cat \U0001f408 on a mat", "task_options": {"boxes": [[1, 2, 3, 4]]}}}
    resp = client.post("/echo", json=body)
    assert resp.status_code == 200 and resp.json() == {"received": body}


@pytest.mark.parametrize("raw, field", [
    ('{"input": {"prompt": "\\ud800"}}', "input.prompt"),
    ('{"input": {"prompt": "ok \\udfff tail"}}', "input.prompt"),
    ('{"input": {"\\ud83d": "x"}}', "input.\\ud83d"),
    ('{"input": {"reference_images": ["a", "b\\u0000"]}}', "input.reference_images[1]"),
])
def test_text_that_cannot_be_stored_is_refused_naming_the_field(client, raw, field):
    resp = client.post("/echo", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["invalid_fields"][0]["field"] == field
    assert client.app.state.calls == 0


def test_a_valid_surrogate_pair_is_text(client):
    resp = client.post("/echo", content='{"prompt": "\\ud83d\\ude00"}', headers={"content-type": "application/json"})
    assert resp.status_code == 200 and resp.json()["received"]["prompt"] == "\U0001f600"


@pytest.mark.parametrize("depth", [9, 1000, 100_000])
def test_deep_json_is_refused(client, depth):
    resp = client.post("/echo", content=nested(depth), headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert "nested deeper than 8 levels" in resp.json()["detail"]
    assert client.app.state.calls == 0


def test_json_within_the_depth_limit_passes(client):
    assert client.post("/echo", content=nested(8), headers={"content-type": "application/json"}).status_code == 200


@pytest.mark.parametrize("raw", ['{"guidance": NaN}', '{"guidance": -Infinity}', '{"guidance": 1e999}'])
def test_non_finite_numbers_are_refused(client, raw):
    resp = client.post("/echo", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422 and client.app.state.calls == 0


def test_an_oversize_body_is_refused_declared_or_streamed(client):
    big = json.dumps({"prompt": "x" * (MB + 10)}).encode()
    resp = client.post("/echo", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "1 MB limit (--max-body-mb)" in resp.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for i in range(0, len(big), 64 * 1024):
            yield big[i:i + 64 * 1024]

    resp = client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert client.app.state.calls == 0


def test_uploads_have_their_own_limit(client):
    ok = client.post("/upload", files={"content": ("a.bin", b"\0" * (MB + 10), "application/octet-stream")})
    assert ok.status_code == 200 and ok.json() == {"size": MB + 10}
    resp = client.post("/upload", files={"content": ("a.bin", b"\0" * (3 * MB), "application/octet-stream")})
    assert resp.status_code == 413 and "(--max-upload-mb)" in resp.json()["detail"]
    assert client.app.state.calls == 1


def test_streamed_upload_over_the_limit_is_cut_off(client):
    boundary = "xyz"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"a.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()

    def chunks():
        yield head
        for _ in range(64):  # 4 MB, never a Content-Length
            yield b"\0" * (64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = client.post("/upload", content=chunks(),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status_code == 413
    assert client.app.state.calls == 0


def test_check_json_leaves_non_json_to_the_route():
    check_json(b"not json at all", 8)  # the route's parser reports it, in its own words
    with pytest.raises(InvalidInput):
        check_json(b'{"a": "\\ud800"}', 8)
