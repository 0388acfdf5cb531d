"""Start the real `vace serve` as a subprocess on loopback (optionally with TLS made by trustme)."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIND_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TLS:
    """A test CA and a server certificate for 127.0.0.1 / localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def make(cls, directory: Path) -> TLS:
        import trustme

        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        tls = cls(directory / "ca.pem", directory / "vace.server.pem", directory / "vace.server.key")
        ca.cert_pem.write_to_path(str(tls.ca_file))
        cert.private_key_pem.write_to_path(str(tls.key_file))
        with open(tls.cert_file, "wb") as fh:
            for blob in cert.cert_chain_pems:
                fh.write(blob.bytes())
        return tls


@dataclass
class Server:
    data_dir: Path
    args: list[str] = field(default_factory=list)
    tls: TLS | None = None
    api_key: str | None = None
    port: int = 0
    proc: subprocess.Popen | None = None
    health_seen: list[tuple[int, str]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        import ssl

        verify = ssl.create_default_context(cafile=str(self.tls.ca_file)) if self.tls else True
        return httpx.Client(base_url=self.base_url, verify=verify,
                            headers=headers, timeout=30, **kwargs)

    def start(self, wait_ready: bool = True) -> Server:
        attempt = 0
        while True:
            attempt += 1
            log_from = self._launch()
            try:
                self.wait_health(ready=wait_ready)
                return self
            except RuntimeError:  # it exited: retried only when the port was taken meanwhile
                lost_port = b"address already in use" in self.log_path.read_bytes()[log_from:]
                if not lost_port or attempt == BIND_ATTEMPTS:
                    raise
            except BaseException:
                self.stop()  # a fixture whose start failed never reaches its own stop
                raise

    def _launch(self) -> int:
        """Start `vace serve` on a free port; where its output begins in the log."""
        # free_port() releases the port it found; under pytest-xdist another server may take it first
        self.port = free_port()
        cmd = [sys.executable, "-m", "vace.server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--log-level", "warning", *self.args]
        if self.tls:
            cmd += ["--ssl-certfile", str(self.tls.cert_file), "--ssl-keyfile", str(self.tls.key_file)]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        with open(self.log_path, "ab") as log:
            log_from = log.tell()
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        self.health_seen = []
        return log_from

    def wait_health(self, ready: bool = True, timeout: float = 120.0) -> None:
        """Poll /health, recording what it answered; return once it answers (READY if `ready`)."""
        deadline = time.monotonic() + timeout
        with self.client() as http:
            while time.monotonic() < deadline:
                if self.proc and self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    resp = http.get("/health")
                    self.health_seen.append((resp.status_code, resp.json()["status"]))
                    if not ready or resp.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"server not healthy after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def final_log(self, timeout: float = 30.0) -> str:
        """The log once no process writes to it any more (the server's helpers, such as multiprocessing's
        resource tracker, outlive it briefly and report at their own exit)."""
        target = str(self.log_path)

        def writers() -> bool:
            for fd in Path("/proc").glob("[0-9]*/fd/*"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return True
            return False

        wait_for(lambda: not writers(), "every process to close the server's log", timeout=timeout)
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server process (its worker notices and exits on its own)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class WebhookReceiver:
    """POSTs received on loopback, as (headers, raw body); `url` is where to send them."""

    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def wait(self, count: int, timeout: float = 30.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} webhooks after {timeout:.0f} s"
            time.sleep(0.1)
        return self.received


@contextlib.contextmanager
def webhook_receiver(fail_first: int = 0) -> Iterator[WebhookReceiver]:
    """A loopback webhook receiver; the first `fail_first` deliveries are answered 500 (to exercise retries)."""
    failures = [fail_first]
    holder: list[WebhookReceiver] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers["content-length"]))
            if failures[0] > 0:
                failures[0] -= 1
                self.send_response(500)
            else:
                holder[0].received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(WebhookReceiver(url=f"http://127.0.0.1:{httpd.server_port}/hook"))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield holder[0]
    finally:
        httpd.shutdown()


def wait_for(condition, what: str, timeout: float = 120.0):
    """Poll `condition()` until it returns something truthy (bounded, 0.2 s apart); that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s")


def stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP: a fault-test hook was reached)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def release(pid: int) -> None:
    """SIGCONT a worker the hook stopped, so a failed test leaves no stopped process behind (it then sees its
    server gone and exits)."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


# A job still denoising a few seconds after its first step (100 tiny-model steps: about 6 s on one free core), so
# that a test can cancel it or kill its worker mid-run. At 32x32x17 the 100 steps took 1.5 s.
LONG_JOB = {"steps": 100, "width": 128, "height": 128, "num_frames": 33}


def wait_until_denoising(prediction: object, timeout: float = 120.0) -> None:
    """Reload a replicate Prediction until its logs show a denoising step (bounded)."""
    deadline = time.monotonic() + timeout
    while "denoising step" not in (prediction.logs or "") and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.1)
        prediction.reload()  # type: ignore[attr-defined]
    assert "denoising step" in (prediction.logs or ""), prediction.logs  # type: ignore[attr-defined]


def cancel_between_steps(prediction: object, total: int) -> None:
    """Cancel a denoising replicate Prediction; it must end `canceled` at a step boundary before the last step."""
    prediction.cancel()  # type: ignore[attr-defined]
    prediction.wait()  # type: ignore[attr-defined]
    assert prediction.status == "canceled"  # type: ignore[attr-defined]
    logs = prediction.logs  # type: ignore[attr-defined]
    steps = [int(line.split("denoising step ")[1].split("/")[0])
             for line in logs.splitlines() if "denoising step" in line]
    assert steps and steps[-1] < total
    assert f"cancelled after step {steps[-1]}/{total}" in logs  # nothing ran after the flagged step
