"""The clients our users run, unmodified, against one fresh tiny demo server over TLS (loopback only): the
JavaScript `replicate` (with a file input) and `@fal-ai/client` (pointed here by its requestMiddleware) under
Debian's Node, replicate 2.x for Python, and curl for WaveSpeed. The replicate clients get the bare host as their
base URL (a 2.x run also gets HOST/v1, the form of its own default): the server answers both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.real_clients import js_clients, replicate_2x
from tests.server_process import TLS, Server
from tests.synthetic import moving_square_frames, save_image, write_video
from tests.system_deps import need_debian
from vace.pipelines.media.codec import probe_video

API_KEY = "first-contact-key"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tiny_a14b_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """What the README starts: the tiny models with every default (demo render cap, tiny safety checker)."""
    root = tmp_path_factory.mktemp("real-clients")
    srv = Server(root / "data", tls=TLS.make(root / "tls"), api_key=API_KEY,
                 args=["--model", "tiny", "--model", "tiny-a14b"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A clip with a moving square and a mask image of the square in its first frame."""
    folder = tmp_path_factory.mktemp("client-media")
    frames = moving_square_frames(17, 96, 64)
    first = np.where(frames[0, ..., 0] > 200, 255, 0).astype(np.uint8)
    return write_video(folder / "clip.mp4", frames, fps=8), save_image(Image.fromarray(first), folder / "mask.png")


def decodable(path: Path) -> dict:
    info = probe_video(path)
    assert info["num_frames"] > 0, info
    return info


def test_javascript_replicate_and_fal_clients(server: Server, media, tmp_path: Path):
    node, folder = js_clients()
    video, mask = media
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(server.tls.ca_file)}
    proc = subprocess.run([node, "clients.mjs", server.base_url, API_KEY, str(video), str(mask), str(tmp_path)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + server.log_tail()
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # replicate: the file went up through POST /files (metadata as a file part), the output is an https FileOutput
    assert decodable(tmp_path / "replicate.mp4") == {"num_frames": 17, "width": 832, "height": 480, "fps": 16.0}
    with server.client() as http:
        uploads = http.get("/v1/files").json()["results"]
        assert any(f["size"] == video.stat().st_size for f in uploads)
        for name in ("fal_pose", "fal_inpainting"):
            result = report[name]
            assert len(result["requestId"]) == 26, name  # read from the x-fal-request-id header
            out = tmp_path / f"{name}.mp4"
            out.write_bytes(http.get(result["video"]["url"]).content)
            assert decodable(out)["num_frames"] == result["video"]["num_frames"] == 17, name
    stamps = report["fal_pose"]["logTimestamps"]
    assert len(stamps) >= 3 and len(set(stamps)) > 1, stamps  # each log line carries its own time


def test_replicate_2x_python_and_curl_wavespeed(server: Server, media, tmp_path: Path):
    video, _ = media
    script = """
import json, sys, replicate
host = sys.argv[1]
bare = replicate.Replicate(base_url=host)  # the bare host: served at the root as well as under /v1
with open(sys.argv[2], "rb") as fh:
    output = bare.run("prunaai/vace-14b", input={"prompt": "a red square", "src_video": fh, "size": "832*480",
                                                  "frame_num": 17, "sample_steps": 2, "seed": 9})
open(sys.argv[3], "wb").write(output.read())
v1 = replicate.Replicate(base_url=host + "/v1")
text_only = v1.run("prunaai/vace-14b", input={"prompt": "snow", "size": "480*832", "frame_num": 5, "sample_steps": 1})
open(sys.argv[4], "wb").write(text_only.read())
print(json.dumps({"version": replicate.__version__, "urls": [str(output.url), str(text_only.url)]}))
"""
    env = {**os.environ, "PYTHONPATH": str(replicate_2x()), "REPLICATE_API_TOKEN": API_KEY,
           "SSL_CERT_FILE": str(server.tls.ca_file)}
    out, out_v1 = tmp_path / "replicate2.mp4", tmp_path / "replicate2-v1.mp4"
    proc = subprocess.run([sys.executable, "-c", script, server.base_url, str(video), str(out), str(out_v1)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + server.log_tail()
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["version"].startswith("2.")
    assert all(url.startswith(server.base_url + "/outputs/") for url in report["urls"]), report
    assert decodable(out) == {"num_frames": 17, "width": 832, "height": 480, "fps": 16.0}
    assert decodable(out_v1) == {"num_frames": 5, "width": 480, "height": 832, "fps": 16.0}

    # WaveSpeed's documented flow with curl: upload, submit (the video as the control as it is, task none: the
    # default depth annotator is test_wavespeed_api's; safety checker on by default), poll the result, download.
    curl = need_debian("curl", "curl")

    def call(*args: str) -> dict:
        done = subprocess.run([curl, "-sS", "--cacert", str(server.tls.ca_file), "-H",
                               f"Authorization: Bearer {API_KEY}", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    api = f"{server.base_url}/api/v3"
    uploaded = call("-F", f"file=@{video};type=video/mp4", f"{api}/media/upload/binary")["data"]["download_url"]
    body = {"prompt": "a red square", "video": uploaded, "task": "none", "duration": 5, "size": "832*480",
            "num_inference_steps": 2, "seed": 3}
    submitted = call("-H", "Content-Type: application/json", "-d", json.dumps(body),
                     f"{api}/wavespeed-ai/wan-2.1-14b-vace")
    assert submitted["code"] == 200, submitted
    deadline = time.monotonic() + 1200  # 81 frames: WaveSpeed's shortest duration
    while (data := call(f"{api}/predictions/{submitted['data']['id']}/result")["data"])["status"] not in \
            ("completed", "failed"):
        assert time.monotonic() < deadline, data
        time.sleep(0.5)
    assert data["status"] == "completed", data["error"]
    assert data["has_nsfw_contents"] == [False]  # checked, by the tiny checker the tiny demo server loads
    subprocess.run([curl, "-sS", "--cacert", str(server.tls.ca_file), "-o", str(tmp_path / "ws.mp4"),
                    data["outputs"][0]], check=True, timeout=60)
    assert decodable(tmp_path / "ws.mp4") == {"num_frames": 81, "width": 832, "height": 480, "fps": 16.0}
