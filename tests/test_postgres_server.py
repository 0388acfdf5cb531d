"""Two `vace serve` processes on one real PostgreSQL database: one queue, every job rendered exactly once."""

from __future__ import annotations

from pathlib import Path

from tests.server_process import Server, wait_for
from vace.server.store import TERMINAL

JOBS = 100


def wait_all_terminal(server: Server, ids: list[str]) -> dict[str, dict]:
    """Each prediction's body once it is terminal, waiting on one at a time (a poll of all 100 would load the CPUs
    the workers render on)."""
    with server.client() as http:
        def terminal(pid: str) -> dict | None:
            body = http.get(f"/v1/predictions/{pid}").json()
            return body if body["status"] in TERMINAL else None

        return {pid: wait_for(lambda pid=pid: terminal(pid), f"prediction {pid}", timeout=600) for pid in ids}


def test_two_servers_share_one_queue_and_render_each_job_once(postgres, tiny_model_dir: Path,
                                                            tmp_path: Path):
    import replicate

    url = postgres.new_database()
    servers = [Server(tmp_path / name, args=["--model", "tiny", "--database-url", url]) for name in ("a", "b")]
    try:
        for server in servers:  # both start together (and migrate the new database together)
            server.start(wait_ready=False)
        for server in servers:
            server.wait_health(timeout=600)
        ids = []
        for i in range(JOBS):  # created through both servers alternately
            with servers[i % 2].client() as http:
                resp = http.post("/v1/models/vace/tiny/predictions", json={"input": {
                    "prompt": f"job {i}", "width": 16, "height": 16, "num_frames": 5, "steps": 1, "seed": i}})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])
        done = wait_all_terminal(servers[0], ids)
        assert {body["status"] for body in done.values()} == {"succeeded"}
        # Each server renders into its own data dir: every job's video exists in exactly one of them.
        rendered = [{p.stem for p in (s.data_dir / "outputs").glob("*.mp4")} for s in servers]
        assert rendered[0] | rendered[1] == set(ids) and not rendered[0] & rendered[1]
        assert rendered[0] and rendered[1]  # both workers took jobs from the one queue
        assert all(body["logs"].count("model: tiny; seed:") == 1 for body in done.values())  # run once each
        # Either API answers for any prediction, whichever server created or ran it.
        client_b = replicate.Client(api_token="unused", base_url=servers[1].base_url)
        for pid in (ids[0], ids[1], ids[-1]):
            seen = client_b.predictions.get(pid)
            assert seen.status == "succeeded" and seen.input["prompt"] == done[pid]["input"]["prompt"]
    finally:
        for server in servers:
            server.stop()
