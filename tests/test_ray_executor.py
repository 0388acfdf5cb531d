"""`vace serve --executor ray` on one Ray cluster on loopback (the tiny model runs on the CPU; the GPUs are declared):
two nodes with one GPU each at first. An actor killed before its job starts denoising (the fault-test hook holds
it there) has the job requeued; 20 predictions through the official replicate client run on both nodes; a cancel
lands between two steps; a node killed mid-job fails that job while the other one finishes the queue. Then a node
with two GPUs joins the running cluster and gets workers that take jobs, and a second server with
`--sequence-parallel 2` runs a 2-rank group there whose video equals the single-rank one."""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.server_process import Server, cancel_between_steps, stopped, wait_until_denoising
from tests.system_deps import need_python
from vace.pipelines.job.job import Job
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.media.codec import from_uint8, load_video, probe_video
from vace.server.storage import LocalStorage
from vace.server.store import Prediction, Store, new_id
from vace.server.worker.ray_executor import driver_ip, inline_local_media

API_KEY = "ray-key"
NODE_IP = "127.0.0.2"


GROUP_JOB = {"prompt": "a fox in the snow", "width": 48, "height": 32, "num_frames": 9, "steps": 2, "seed": 21}


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
                 args=["--model", "tiny", "--executor", "ray", "--ray-address", cluster.address,
                       "--test-stop-at-step", "0"])  # the first job handed out stops before denoising
    srv.start(wait_ready=False)  # answers STARTING while it joins the cluster and the actors load the model
    srv.wait_health(timeout=600)
    wait_for(lambda: [w["state"] for w in health(srv)["workers"]] == ["READY", "READY"], 600, "both workers ready")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def renders() -> dict[str, Path]:
    """What one test keeps for a later one (the single-rank reference of the group render, the two-GPU node)."""
    return {}


def replicate_client(server: Server):
    import replicate

    return replicate.Client(api_token=API_KEY, base_url=server.base_url)


@pytest.fixture(scope="module")
def client(server: Server):
    return replicate_client(server)


def health(server: Server) -> dict:
    with server.client() as http:
        return http.get("/health").json()


def wait_for(condition, timeout: float, what: str, show=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout}s {show()}"
        time.sleep(0.5)


def stored(server: Server, prediction_id: str) -> Prediction:
    store = Store(f"sqlite:///{server.data_dir / 'vace.db'}")
    try:
        return store.get(prediction_id)
    finally:
        store.close()


def ran_on(server: Server, prediction_id: str) -> str:
    return stored(server, prediction_id).metrics["worker"]["node"]


def worker_lines(server: Server, worker_id: str) -> list[str]:
    with server.client() as http:
        scrape = http.get("/metrics").text.splitlines()
    return [line for line in scrape if line.startswith("vace_worker_up{") and f'worker="{worker_id}"' in line]


def test_an_actor_lost_before_denoising_has_its_job_requeued(server: Server, client):
    """The first job stops its actor just before denoising; the actor process is killed. Ray restarts the actor,
    and the job goes back to the queue (once) and is rendered."""
    held = client.predictions.create(model="vace/tiny", input=small(seed=99))
    wait_for(lambda: any(w["job"] == held.id for w in health(server)["workers"]), 120, "the job handed out")
    [worker] = [w for w in health(server)["workers"] if w["job"] == held.id]
    wait_for(lambda: stopped(worker["pid"]), 120, "the actor held before denoising")
    os.kill(worker["pid"], signal.SIGKILL)
    held.wait()
    assert held.status == "succeeded", held.error
    assert (f"requeued: the Ray worker {worker['id']} on node {NODE_IP} ({worker['node']}) was lost "
            in held.logs) and "before this prediction started denoising" in held.logs
    assert stored(server, held.id).requeues == 1

    def restarted() -> bool:
        workers = health(server)["workers"]
        [again] = [w for w in workers if w["id"] == worker["id"]]
        return again["restarts"] == 1 and again["pid"] != worker["pid"] and {w["state"] for w in workers} == {"READY"}

    wait_for(restarted, 300, "the restarted actor")


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


def test_a_node_joining_the_running_cluster_gets_workers_that_take_jobs(server: Server, client, cluster, renders):
    """After the lost node: one worker READY, one RESTARTING. A node with two GPUs joins: the restarting actor is
    placed there and a third worker starts on its second GPU; jobs run there."""
    joined = cluster.add_node(num_cpus=2, num_gpus=2, node_ip_address=NODE_IP)
    # Ray may count the lost node's GPU a little longer: a fourth worker would then wait for a GPU (STARTING).
    wait_for(lambda: [w["state"] for w in health(server)["workers"]].count("READY") == 3, 600, "three workers ready",
             show=lambda: health(server)["workers"])
    workers = [w for w in health(server)["workers"] if w["state"] == "READY"]
    on_new = [w for w in workers if w["node"] == joined.node_id]
    assert len(on_new) == 2 and sorted(g for w in on_new for g in w["gpus"]) == ["0", "1"]
    for w in workers:  # what /health says of every worker of the cluster
        assert set(w) >= {"id", "node", "node_ip", "gpus", "state", "job", "restarts"} and w["node_ip"] == NODE_IP
        assert [line.split('device="')[1].split('"')[0] for line in worker_lines(server, w["id"])] == \
            [f"{NODE_IP}/gpu{g}" for g in w["gpus"]]
    # three at once: the older node's one worker cannot hold more than one of them
    jobs = [client.predictions.create(model="vace/tiny", input=small(seed=40 + i)) for i in range(3)]
    for job in jobs:
        job.wait()
        assert job.status == "succeeded", job.error
    assert joined.node_id in {ran_on(server, job.id) for job in jobs}
    reference = client.predictions.create(model="vace/tiny", input=GROUP_JOB)  # on one GPU: the group's reference
    reference.wait()
    assert reference.status == "succeeded" and stored(server, reference.id).metrics["gpus"] == 1
    renders["single"] = server.data_dir / "outputs" / f"{reference.id}.mp4"
    renders["two_gpu_node"] = joined.node_id


def test_a_sequence_parallel_group_runs_on_one_node(server: Server, cluster, renders,
                                                    tmp_path_factory: pytest.TempPathFactory):
    """A second server with --sequence-parallel 2 on the same cluster: one worker, a placement group of two GPUs
    packed on the node that has two, whose two rank processes (gloo on CPU) render the same video as one rank."""
    server.stop()  # its actors free the GPUs
    group_server = Server(tmp_path_factory.mktemp("ray-sp") / "data", api_key=API_KEY, args=[
        "--model", "tiny", "--executor", "ray", "--ray-address", cluster.address, "--sequence-parallel", "2"])
    try:
        group_server.start(wait_ready=False)
        wait_for(lambda: [w["state"] for w in health(group_server)["workers"]] == ["READY"], 600, "the group ready",
                 show=lambda: health(group_server))
        [worker] = health(group_server)["workers"]
        two_gpu_node = renders["two_gpu_node"]
        assert worker["node"] == two_gpu_node and worker["gpus"] == ["0", "1"] and worker["devices"] == ["cpu"] * 2
        assert len(worker_lines(group_server, worker["id"])) == 2  # one series per GPU of the group
        job = replicate_client(group_server).predictions.create(model="vace/tiny", input=GROUP_JOB)
        job.wait()
        assert job.status == "succeeded", job.error
        metrics = stored(group_server, job.id).metrics
        assert metrics["gpus"] == 2 and metrics["sp_group_size"] == 2 and metrics["worker"]["node"] == two_gpu_node
        sharded = group_server.data_dir / "outputs" / f"{job.id}.mp4"
        group, single = (from_uint8(load_video(p, "video").frames) for p in (sharded, renders["single"]))
        same = sharded.read_bytes() == renders["single"].read_bytes()
        print(f"2-rank Ray group vs one rank: max |diff| {np.abs(group - single).max():.2e} (decoded frames "
              f"{group.shape}); mp4 bytes {'equal' if same else 'differ'}")
        assert group.shape == single.shape == (9, 32, 48, 3)
        assert np.abs(group - single).max() <= 1e-4
    finally:
        group_server.stop()


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
