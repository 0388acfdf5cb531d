"""`vace serve --device cpu --sequence-parallel 2`: a 2-rank gloo group behind the Replicate API."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.server_process import Server, wait_until_denoising
from vace.pipelines.media.codec import from_uint8, load_video

API_KEY = "sp-key"
LEVELS = 3


def _server(root: Path, *extra: str) -> Server:
    return Server(root / "data", api_key=API_KEY, args=["--model", "tiny", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def sp_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = _server(tmp_path_factory.mktemp("sp"), "--sequence-parallel", "2", "--sp-mode", "ulysses")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.2")


def _client(server: Server):
    import replicate

    return replicate.Client(api_token=API_KEY, base_url=server.base_url)


def _children(pid: int) -> set[int]:
    """Pids whose parent is `pid` (the ranks a sequence-parallel worker spawned)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def _ranks(server: Server) -> set[int]:
    with server.client() as http:
        workers = http.get("/health").json()["workers"]
    assert [w["devices"] for w in workers] == [["cpu", "cpu"]]
    return _children(workers[0]["pid"])


def _render(server: Server, tmp: Path, name: str, gpus: int) -> np.ndarray:
    prediction = _client(server).predictions.create(model="vace/tiny", input={
        "prompt": "a red fox in the snow", "width": 80, "height": 48, "num_frames": 13, "steps": 3, "seed": 21})
    prediction.wait()
    assert prediction.status == "succeeded", prediction.error
    metrics = prediction.metrics  # device time held, times the devices of the group that rendered it
    assert metrics["gpus"] == gpus and metrics["experts"] == 1
    assert metrics["gpu_seconds"] == pytest.approx(metrics["predict_time"] * gpus, abs=0.005)
    with server.client() as http:
        resp = http.get(prediction.output)
    assert resp.status_code == 200
    path = tmp / f"{name}.mp4"
    path.write_bytes(resp.content)
    return from_uint8(load_video(path, "video").frames)


def test_gpus_and_groups_become_workers():
    from vace.server.worker.devices import worker_device_sets

    assert worker_device_sets("auto", "0,1,2,3", 1) == [("cuda:0",), ("cuda:1",), ("cuda:2",), ("cuda:3",)]
    assert worker_device_sets("auto", "0,1,2,3,4,5,6,7", 4) == [
        tuple(f"cuda:{i}" for i in range(4)), tuple(f"cuda:{i}" for i in range(4, 8))]
    assert worker_device_sets("cpu", None, 2) == [("cpu", "cpu")]
    assert worker_device_sets("cuda:1", None, 1) == [("cuda:1",)]
    with pytest.raises(ValueError):
        worker_device_sets("cuda", None, 2)  # GPU groups are named with --gpus
    with pytest.raises(ValueError):
        worker_device_sets("auto", "0,1,2", 2)


def test_sequence_parallel_server_matches_one_process_server(sp_server, tmp_path_factory, tmp_path):
    single = _server(tmp_path_factory.mktemp("single"))
    single.start()
    try:
        reference = _render(single, tmp_path, "single", gpus=1)
    finally:
        single.stop()
    sharded = _render(sp_server, tmp_path, "sharded", gpus=2)
    levels = np.abs(sharded - reference).max() * 255
    print(f"vace serve --sequence-parallel 2 vs one-process server: max |diff| {levels:.2f} 8-bit levels "
          f"(decoded mp4 frames {sharded.shape})")
    assert sharded.shape == reference.shape == (13, 48, 80, 3)
    assert levels <= LEVELS


def test_cancel_mid_run_leaves_every_rank_alive_and_ready(sp_server, tmp_path):
    ranks = _ranks(sp_server)
    assert len(ranks) == 2
    client = _client(sp_server)
    prediction = client.predictions.create(model="vace/tiny", input={
        "prompt": "a long one", "width": 80, "height": 48, "num_frames": 13, "steps": 100, "seed": 2})
    wait_until_denoising(prediction)
    assert prediction.status == "processing"
    prediction.cancel()
    prediction.wait()
    assert prediction.status == "canceled"
    assert "cancelled after step" in prediction.logs
    assert _ranks(sp_server) == ranks  # the same two rank processes, still running
    after = _render(sp_server, tmp_path, "after-cancel", gpus=2)
    assert after.shape == (13, 48, 80, 3)
    assert _ranks(sp_server) == ranks
