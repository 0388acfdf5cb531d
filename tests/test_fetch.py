"""User-given URLs: fetched from an allow-listed loopback server, with content-type and size limits."""

from __future__ import annotations

import http.server
import ipaddress
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from tests.synthetic import data_uri, solid_image
from vace.pipelines.job.request import RequestError
from vace.pipelines.media.addresses import refusal
from vace.pipelines.media.fetch import FetchPolicy, check_url, decode_data_uri, materialize

PNG = __import__("base64").b64decode(data_uri(solid_image(8, 8, (1, 2, 3))).split(",", 1)[1])


class Handler(http.server.BaseHTTPRequestHandler):
    hosts_seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.hosts_seen.append(self.headers.get("host", ""))
        if self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            for _ in range(100):  # bounded: 1 byte every 0.1 s for at most 10 s
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
            return
        body, ctype = (PNG, "image/png") if self.path == "/img.png" else (b"<html></html>", "text/html")
        redirects = {"/redirect": "/img.png", "/loop": "/loop"}
        if self.path in redirects or self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", redirects.get(self.path) or urllib.parse.unquote(self.path[4:]))
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def serve_loopback() -> Iterator[str]:
    """A Handler server on a free loopback port, for as long as the generator runs."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    yield from serve_loopback()


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
    with pytest.raises(RequestError, match="is a loopback address; it is not allowed"):
        materialize(f"{server}/img.png", "video", tmp_path, FetchPolicy())
    allowed = FetchPolicy(allow_hosts={"127.0.0.1"})
    with pytest.raises(RequestError, match="content type 'text/html'"):
        materialize(f"{server}/page", "video", tmp_path, allowed)
    with pytest.raises(RequestError, match="over the 16 limit"):
        materialize(f"{server}/img.png", "video", tmp_path, FetchPolicy(allow_hosts={"127.0.0.1"}, max_bytes=16))


@pytest.fixture(scope="module")
def second_server() -> Iterator[str]:
    """Another loopback server: a redirect between two hosts (as Hugging Face's /resolve/ to its CDN)."""
    yield from serve_loopback()


def test_redirects_are_followed_and_every_hop_is_checked(server, second_server, tmp_path):
    allowed = FetchPolicy(allow_hosts={"127.0.0.1"})
    assert materialize(f"{server}/redirect", "video", tmp_path, allowed).read_bytes() == PNG
    hop = f"{server}/to/" + urllib.parse.quote(f"{second_server}/img.png", safe="")
    Handler.hosts_seen.clear()
    assert materialize(hop, "video", tmp_path, allowed).read_bytes() == PNG
    assert Handler.hosts_seen == [server.removeprefix("http://"), second_server.removeprefix("http://")]
    with pytest.raises(RequestError, match="redirected more than 5 times"):
        materialize(f"{server}/loop", "video", tmp_path, allowed)
    with pytest.raises(RequestError, match="HTTP 302"):  # no Location to follow is no redirect
        materialize(f"{server}/to/", "video", tmp_path, allowed)
    # an allowed name whose redirect points at a loopback address the policy refuses
    port = int(server.rsplit(":", 1)[1])
    named = FetchPolicy(allow_hosts={"media.test"}, resolve=lambda host, port: ["127.0.0.1"])
    hop = f"http://media.test:{port}/to/" + urllib.parse.quote(f"{second_server}/img.png", safe="")
    with pytest.raises(RequestError) as err:
        materialize(hop, "video", tmp_path, named)
    assert err.value.field == "video" and "'127.0.0.1' is a loopback address; it is not allowed" in err.value.message


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254", "0.0.0.0",
    "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "ff02::1", "2001:db8::1",
    "64:ff9b::a00:1", "64:ff9b::808:808", "64:ff9b:1::1", "2002:a00:1::1", "2002:808:808::1", "2001:0:1::1",
    "::ffff:10.0.0.1", "::ffff:8.8.8.8", "::a00:1",
])
def test_non_global_and_embedded_ipv4_addresses_are_refused(address):
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::200e"])
def test_global_unicast_addresses_pass(address):
    assert refusal(ipaddress.ip_address(address)) is None


def test_nat64_and_6to4_literals_and_answers_are_refused(tmp_path):
    for url in ("http://[64:ff9b::7f00:1]/a.png", "http://[2002:7f00:1::1]/a.png", "http://[::ffff:127.0.0.1]/"):
        with pytest.raises(RequestError, match="embedding an IPv4 address|loopback"):
            check_url(url, FetchPolicy(), "video")
    # one refused answer among public ones refuses the host: the client could connect to any of them
    policy = FetchPolicy(resolve=lambda host, port: ["8.8.8.8", "64:ff9b::a9fe:a9fe"])
    with pytest.raises(RequestError, match=r"resolves to 64:ff9b::a9fe:a9fe, an IPv6 address embedding"):
        check_url("https://media.example/clip.mp4", policy, "video")


def test_the_checked_address_is_the_one_connected_to(server, tmp_path):
    """The name is resolved once; the request goes to that address with the original Host header, so a DNS
    answer that changes after the check (rebinding) is never used."""
    port = int(server.rsplit(":", 1)[1])
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    policy = FetchPolicy(allow_hosts={"media.test"}, resolve=resolve)
    Handler.hosts_seen.clear()
    path = materialize(f"http://media.test:{port}/img.png", "first_frame", tmp_path, policy)
    assert path.read_bytes() == PNG
    assert calls == ["media.test"]
    assert Handler.hosts_seen == [f"media.test:{port}"]
    target, = check_url(f"https://user:pw@media.test:{port}/a.png", policy, "video")
    assert target.url == f"https://user:pw@127.0.0.1:{port}/a.png"
    assert target.extensions == {"sni_hostname": "media.test"}


def test_a_trickling_host_is_cut_off_at_the_total_deadline(server, tmp_path):
    policy = FetchPolicy(allow_hosts={"127.0.0.1"}, timeout_s=2.0, read_timeout_s=5.0)
    with pytest.raises(RequestError, match="took longer than 2 s"):
        materialize(f"{server}/trickle", "video", tmp_path, policy)


@pytest.mark.parametrize("uri, message", [
    ("data:image/png;base64", "no ','"),
    ("data:image/png;base64,@@@not-base64", "not valid base64"),
    ("data:image/png;base64,iVBORw0KGgo", "not valid base64"),  # bad padding
])
def test_malformed_data_uris_are_refused(uri, message):
    with pytest.raises(RequestError, match=message):
        decode_data_uri(uri, "image")
