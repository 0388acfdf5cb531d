"""`vace serve --executor ray` on one Ray cluster on loopback (the tiny model runs on the CPU; the GPUs are declared):
two nodes with one GPU each at first. An actor that stops before its job starts denoising (the fault-test hook
SIGSTOPs it there) is killed after --worker-timeout and its job requeued; 20 predictions through the official
replicate client run on both nodes; a cancel lands between two steps, and a job whose uploaded input is removed
before it is handed out fails saying so; a node killed mid-job fails that job while the other one finishes the
queue. Then a node with two GPUs joins the running cluster and gets workers that take jobs, and a second server
with `--sequence-parallel 2` runs a 2-rank group there whose video equals the single-rank one."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server_process import LONG_JOB, Server, cancel_between_steps, stopped, wait_until_denoising
from tests.system_deps import need_python
from vace.pipelines.job.job import Job
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.media.codec import from_uint8, load_video, probe_video
from vace.server.storage import LocalStorage
from vace.server.store import Prediction, Store, new_id
from vace.server.worker.ray_actor import EventChannel
from vace.server.worker.ray_executor import driver_ip, inline_local_media

API_KEY = "ray-key"
NODE_IP = "127.0.0.2"
WORKER_TIMEOUT_S = 20  # an actor silent this long is killed (a running one beats every second)


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
                       "--worker-timeout", str(WORKER_TIMEOUT_S),
                       "--test-stop-at-step", "0"])  # the first job handed out stops before denoising
    srv.start(wait_ready=False)  # answers STARTING while it joins the cluster and the actors load the model
    srv.wait_health(timeout=600)
    wait_for(lambda: [w["state"] for w in health(srv)["workers"]] == ["READY", "READY"], 600, "both workers ready")
    yield srv
    srv.stop()


def replicate_client(server: Server):
    import replicate

    return replicate.Client(api_token=API_KEY, base_url=server.base_url)


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


@pytest.fixture(scope="module")
def held(server: Server) -> tuple[object, dict]:
    """The first job the server hands out meets the fault-test hook: its actor stops (SIGSTOP) just before
    denoising. Run here, before any test's own jobs, so each test finds the hook spent: (the held prediction once
    finished, the worker that held it)."""
    client = replicate_client(server)
    prediction = client.predictions.create(model="vace/tiny", input=small(seed=99))
    wait_for(lambda: any(w["job"] == prediction.id for w in health(server)["workers"]), 120, "the job handed out")
    [worker] = [w for w in health(server)["workers"] if w["job"] == prediction.id]
    wait_for(lambda: stopped(worker["pid"]), 120, "the actor held before denoising")
    prediction.wait()

    def restarted() -> bool:
        workers = health(server)["workers"]
        [again] = [w for w in workers if w["id"] == worker["id"]]
        return again["restarts"] == 1 and again["pid"] != worker["pid"] and {w["state"] for w in workers} == {"READY"}

    wait_for(restarted, 300, "the restarted actor")
    return prediction, worker


@pytest.fixture(scope="module")
def client(server: Server, held: tuple[object, dict]):
    return replicate_client(server)


def test_a_silent_actor_is_killed_and_its_job_requeued(server: Server, held: tuple[object, dict]):
    """Nothing comes from the held actor for --worker-timeout, so the server kills it. Ray restarts the actor (the
    fixture waits for that), and the job goes back to the queue (once) and is rendered."""
    prediction, worker = held
    assert prediction.status == "succeeded", prediction.error
    assert (f"requeued: the Ray worker {worker['id']} on node {NODE_IP} ({worker['node']}) stopped responding "
            f"(nothing from it for {WORKER_TIMEOUT_S} s) before this prediction started denoising"
            in prediction.logs)
    assert stored(server, prediction.id).requeues == 1


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


def test_cancel_stops_the_actor_between_steps_and_a_job_whose_input_is_gone_fails(server: Server, client,
                                                                                    tmp_path: Path):
    """Both workers run long jobs while a job with an uploaded reference image waits; its file is removed from the
    data dir before it is handed out: it fails saying so (nothing else is left running or held), and the job after
    it runs. Each long job is canceled between two steps."""
    long = [client.predictions.create(model="vace/tiny", input=small(**LONG_JOB, seed=seed))
            for seed in (1, 2)]
    for prediction in long:
        wait_until_denoising(prediction, timeout=120)
    image = tmp_path / "reference.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    with image.open("rb") as upload:
        orphan = client.predictions.create(model="vace/tiny", input=small(reference_images=[upload]))
    [reference] = stored(server, orphan.id).job.request.reference_images
    Path(reference).unlink()
    after = client.predictions.create(model="vace/tiny", input=small(seed=3))
    for prediction in long:
        cancel_between_steps(prediction, LONG_JOB["steps"])
    orphan.wait()
    assert orphan.status == "failed"
    assert orphan.error == ("invalid input: reference_images[0]: file not found (removed from this server's "
                            "storage)")  # as a local worker says it; no server path
    assert orphan.logs.endswith(orphan.error + "\n")
    assert stored(server, orphan.id).lease_owner is None
    after.wait()
    assert after.status == "succeeded", after.error
    assert after.logs.count("done in") == 1 and orphan.error not in after.logs  # its own events only


def test_a_lost_node_fails_its_job_and_the_other_finishes_the_queue(server: Server, client, cluster):
    doomed = client.predictions.create(model="vace/tiny", input=small(**LONG_JOB))
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


def test_a_joining_node_gets_workers_and_a_sequence_parallel_group_there_renders_as_one_rank(
        server: Server, client, cluster, tmp_path_factory: pytest.TempPathFactory):
    """A node with two GPUs joins the running cluster: workers start on both its GPUs (after the lost node, the
    restarting actor is placed there) and jobs run there. Then this server stops (its actors free the GPUs) and a
    second one with --sequence-parallel 2 runs one worker, a placement group of two GPUs packed on that node, whose
    two rank processes (gloo on CPU) render the same video as one rank of the first server did."""
    joined = cluster.add_node(num_cpus=2, num_gpus=2, node_ip_address=NODE_IP)

    def on_new() -> list[dict]:
        return [w for w in health(server)["workers"] if w["node"] == joined.node_id and w["state"] == "READY"]

    # Ray may count a lost node's GPU a little longer: a further worker would then wait for a GPU (STARTING).
    wait_for(lambda: len(on_new()) == 2, 600, "two workers ready on the new node",
             show=lambda: health(server)["workers"])
    assert sorted(g for w in on_new() for g in w["gpus"]) == ["0", "1"]
    workers = [w for w in health(server)["workers"] if w["state"] == "READY"]
    for w in workers:  # what /health says of every worker of the cluster
        assert set(w) >= {"id", "node", "node_ip", "gpus", "state", "job", "restarts"} and w["node_ip"] == NODE_IP
        assert [line.split('device="')[1].split('"')[0] for line in worker_lines(server, w["id"])] == \
            [f"{NODE_IP}/gpu{g}" for g in w["gpus"]]
    # one job per ready worker at once: one of them lands on the new node
    jobs = [client.predictions.create(model="vace/tiny", input=small(seed=40 + i)) for i in range(len(workers))]
    for job in jobs:
        job.wait()
        assert job.status == "succeeded", job.error
    assert joined.node_id in {ran_on(server, job.id) for job in jobs}
    reference = client.predictions.create(model="vace/tiny", input=GROUP_JOB)  # on one GPU: the group's reference
    reference.wait()
    assert reference.status == "succeeded" and stored(server, reference.id).metrics["gpus"] == 1
    single = server.data_dir / "outputs" / f"{reference.id}.mp4"

    server.stop()  # its actors free the GPUs (the last test of this module to use it)
    group_server = Server(tmp_path_factory.mktemp("ray-sp") / "data", api_key=API_KEY, args=[
        "--model", "tiny", "--executor", "ray", "--ray-address", cluster.address, "--sequence-parallel", "2"])
    try:
        group_server.start(wait_ready=False)
        wait_for(lambda: [w["state"] for w in health(group_server)["workers"]] == ["READY"], 600, "the group ready",
                 show=lambda: health(group_server))
        [worker] = health(group_server)["workers"]
        assert worker["node"] == joined.node_id and worker["gpus"] == ["0", "1"] and worker["devices"] == ["cpu"] * 2
        assert len(worker_lines(group_server, worker["id"])) == 2  # one series per GPU of the group
        job = replicate_client(group_server).predictions.create(model="vace/tiny", input=GROUP_JOB)
        job.wait()
        assert job.status == "succeeded", job.error
        metrics = stored(group_server, job.id).metrics
        assert metrics["gpus"] == 2 and metrics["sp_group_size"] == 2 and metrics["worker"]["node"] == joined.node_id
        sharded = group_server.data_dir / "outputs" / f"{job.id}.mp4"
        group, one = (from_uint8(load_video(p, "video").frames) for p in (sharded, single))
        same = sharded.read_bytes() == single.read_bytes()
        print(f"2-rank Ray group vs one rank: max |diff| {np.abs(group - one).max():.2e} (decoded frames "
              f"{group.shape}); mp4 bytes {'equal' if same else 'differ'}")
        assert group.shape == one.shape == (9, 32, 48, 3)
        assert np.abs(group - one).max() <= 1e-4
    finally:
        group_server.stop()


def test_the_driver_joins_a_loopback_cluster_on_its_address():
    assert driver_ip("127.0.0.2:6379") == "127.0.0.2"
    assert driver_ip("10.0.0.1:6379") is None and driver_ip("auto") is None and driver_ip("head:6379") is None


def test_each_job_streams_only_its_own_events(tmp_path: Path):
    """An actor's writes reach the stream of their own job only: a late write of an ended job, or one for a job
    no stream follows, is dropped."""
    channel = EventChannel(tmp_path)
    first = channel.open("a")
    assert channel.report("a", "w", progress=1.0) and not channel.report("b", "w", progress=2.0)
    channel.close("a", first)
    second = channel.open("b")
    assert not channel.heartbeat("a", "w", 30.0)  # the ended job's heartbeat thread, still beating
    channel.report("b", "w", progress=3.0)
    assert first.get_nowait() == ("report", {"progress": 1.0}) and first.empty()
    assert second.get_nowait() == ("report", {"progress": 3.0}) and second.empty()
    again = channel.open("b")  # the same job run again while its old run is still ending
    channel.close("b", second)  # the old run ends: the new run's queue stays
    assert channel.report("b", "w", progress=4.0) and again.get_nowait() == ("report", {"progress": 4.0})


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
