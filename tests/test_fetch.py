"""User-given URLs: fetched from an allow-listed loopback server, with content-type and size limits."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tests.synthetic import data_uri, solid_image
from vace.pipelines.job.request import RequestError
from vace.pipelines.media.fetch import FetchPolicy, materialize

PNG = __import__("base64").b64decode(data_uri(solid_image(8, 8, (1, 2, 3))).split(",", 1)[1])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body, ctype = (PNG, "image/png") if self.path == "/img.png" else (b"<html></html>", "text/html")
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img.png")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_allow_listed_loopback_url_is_fetched(server, tmp_path):
    policy = FetchPolicy(allow_hosts={"127.0.0.1"})
    path = materialize(f"{server}/img.png", "first_frame", tmp_path, policy)
    assert path.read_bytes() == PNG


@pytest.mark.parametrize("url", ["http://[::1/clip.mp4", "https://media.example:99999/clip.mp4"])
def test_malformed_urls_are_request_errors(tmp_path, url):
    with pytest.raises(RequestError, match="malformed URL"):
        materialize(url, "video", tmp_path, FetchPolicy())


def test_unresolvable_host_is_named(tmp_path, monkeypatch):
    import socket

    def no_dns(*args, **kwargs):  # no real lookup: tests send nothing off loopback
        raise socket.gaierror("no such host")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(RequestError, match="'media.example' cannot be resolved"):
        materialize("https://media.example/clip.mp4", "video", tmp_path, FetchPolicy())


def test_limits_and_refusals(server, tmp_path):
    with pytest.raises(RequestError, match="loopback/private"):
        materialize(f"{server}/img.png", "video", tmp_path, FetchPolicy())
    allowed = FetchPolicy(allow_hosts={"127.0.0.1"})
    with pytest.raises(RequestError, match="content type 'text/html'"):
        materialize(f"{server}/page", "video", tmp_path, allowed)
    with pytest.raises(RequestError, match="over the 16 limit"):
        materialize(f"{server}/img.png", "video", tmp_path, FetchPolicy(allow_hosts={"127.0.0.1"}, max_bytes=16))
    with pytest.raises(RequestError, match="HTTP 302"):
        materialize(f"{server}/redirect", "video", tmp_path, allowed)
