"""`vace serve --executor ray` on a two-node Ray cluster on loopback (each node offers one declared GPU; the tiny
model runs on the CPU): 20 predictions through the official replicate client, a cancel between two steps, and a
node killed mid-job while the other one finishes the queue."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest

from tests.server_process import Server, cancel_between_steps, wait_until_denoising
from tests.system_deps import need_python
from vace.pipelines.job.job import Job
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.media.codec import probe_video
from vace.server.storage import LocalStorage
from vace.server.store import Prediction, Store, new_id
from vace.server.worker.ray_executor import driver_ip, inline_local_media

API_KEY = "ray-key"
NODE_IP = "127.0.0.2"


def small(**extra) -> dict:
    return {"prompt": "a red square", "width": 32, "height": 32, "num_frames": 5, "steps": 1, **extra}


@pytest.fixture(scope="module")
def cluster():
    need_python("ray")
    from ray.cluster_utils import Cluster

    # The head schedules nothing; each worker node offers one GPU (declared: there is none). All on a loopback
    # address (not 127.0.0.1, which Ray's clients replace by the machine's network address).
    with pytest.MonkeyPatch.context() as mp:
        # A raylet waits this long for its node's agents to start (Ray's default is too short on a busy 2-core box).
        mp.setenv("RAY_raylet_start_wait_time_s", "120")
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "num_gpus": 0, "node_ip_address": NODE_IP, "include_dashboard": False})
        for _ in range(2):
            cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address=NODE_IP)
        yield cluster
        cluster.shutdown()


@pytest.fixture(scope="module")
def server(cluster, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = Server(tmp_path_factory.mktemp("ray") / "data", api_key=API_KEY,
                 args=["--model", "tiny", "--executor", "ray", "--ray-address", cluster.address])
    srv.start(wait_ready=False)  # answers STARTING while it joins the cluster and the actors load the model
    srv.wait_health(timeout=600)
    wait_for(lambda: [w["state"] for w in health(srv)["workers"]] == ["READY", "READY"], 600, "both workers ready")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server):
    import replicate

    return replicate.Client(api_token=API_KEY, base_url=server.base_url)


def health(server: Server) -> dict:
    with server.client() as http:
        return http.get("/health").json()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.5)


def ran_on(server: Server, prediction_id: str) -> str:
    store = Store(f"sqlite:///{server.data_dir / 'vace.db'}")
    try:
        return store.get(prediction_id).metrics["worker"]["node"]
    finally:
        store.close()


def test_twenty_predictions_run_on_both_nodes(server: Server, client):
    workers = health(server)["workers"]
    assert {w["node_ip"] for w in workers} == {NODE_IP} and len({w["node"] for w in workers}) == 2
    predictions = [client.predictions.create(model="vace/tiny", input=small(seed=i, width=32 + 16 * (i % 2)))
                   for i in range(20)]
    for prediction in predictions:
        prediction.wait()
        assert prediction.status == "succeeded", prediction.error
    for i, prediction in enumerate(predictions[:2]):  # the output crossed from the actor to the API's data dir
        video = server.data_dir / "outputs" / f"{prediction.id}.mp4"
        assert httpx.get(prediction.output, headers={"Authorization": f"Bearer {API_KEY}"}).content == \
            video.read_bytes()
        info = probe_video(video)
        assert (info["width"], info["height"], info["num_frames"]) == (32 + 16 * (i % 2), 32, 5)
    nodes = {ran_on(server, p.id) for p in predictions}
    assert nodes == {w["node"] for w in workers}  # both nodes ran jobs
    with server.client() as http:
        scrape = http.get("/metrics").text.splitlines()
    up = [line for line in scrape if line.startswith("vace_worker_up{") and f'device="{NODE_IP}/' in line]
    assert len(up) == 2 and all(line.endswith(" 1.0") for line in up)
    assert "ray worker" in predictions[0].logs and f"on node {NODE_IP}" in predictions[0].logs


def test_cancel_stops_the_actor_between_steps(client):
    prediction = client.predictions.create(model="vace/tiny", input=small(steps=100, num_frames=17))
    wait_until_denoising(prediction, timeout=120)
    cancel_between_steps(prediction, 100)


def test_a_lost_node_fails_its_job_and_the_other_finishes_the_queue(server: Server, client, cluster):
    doomed = client.predictions.create(model="vace/tiny", input=small(steps=100, num_frames=17))
    wait_until_denoising(doomed, timeout=120)
    [running] = [w for w in health(server)["workers"] if w["job"] == doomed.id]
    [node] = [n for n in cluster.worker_nodes if n.node_id == running["node"]]
    cluster.remove_node(node, allow_graceful=False)  # its raylet and workers are killed
    doomed.wait()
    assert doomed.status == "failed" and f"on node {NODE_IP} ({running['node']}) was lost" in doomed.error
    assert doomed.error.endswith("while this prediction was running; it was not retried")
    after = [client.predictions.create(model="vace/tiny", input=small(seed=i)) for i in range(3)]
    for prediction in after:
        prediction.wait()
        assert prediction.status == "succeeded"
        assert ran_on(server, prediction.id) != running["node"]
    body = health(server)
    assert body["status"] == "READY"  # one worker left; the other waits for a GPU to come back
    assert sorted(w["state"] for w in body["workers"]) == ["READY", "RESTARTING"]


def test_the_driver_joins_a_loopback_cluster_on_its_address():
    assert driver_ip("127.0.0.2:6379") == "127.0.0.2"
    assert driver_ip("10.0.0.1:6379") is None and driver_ip("auto") is None and driver_ip("head:6379") is None


def test_the_servers_own_files_travel_inside_the_job(tmp_path: Path):
    upload = tmp_path / "files" / "clip.mp4"
    upload.parent.mkdir()
    upload.write_bytes(b"video bytes")
    outside = tmp_path.parent / "elsewhere.png"
    request = GenerationRequest(prompt="p", video=str(upload), mask="https://example.com/m.mp4",
                                reference_images=[str(outside)])
    job = Prediction(id=new_id(), endpoint="vace/tiny", version="", dialect="replicate", model="tiny", input={},
                     request=Job(request).to_dict(), status="processing")
    sent = inline_local_media(job, LocalStorage(tmp_path)).job.request
    assert sent.video == "data:video/mp4;base64," + base64.b64encode(b"video bytes").decode()
    assert sent.mask == "https://example.com/m.mp4" and sent.reference_images == [str(outside)]
