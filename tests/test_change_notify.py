"""The API's change feed on a real PostgreSQL wakes on LISTEN/NOTIFY: a change another process writes reaches an
SSE stream and a long poll here although the feed's fallback read is an hour away (so only the announcement can
have delivered it)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from vace.pipelines.job.job import Job
from vace.pipelines.job.request import GenerationRequest
from vace.server.app import create_app
from vace.server.service.predictions import PredictionService, ServiceConfig
from vace.server.settings import ServeSettings
from vace.server.store import CANCELED, PROCESSING, QUEUED, SUCCEEDED, Prediction, Store, new_id

HOUR_S = 3600.0
BOUND_S = 120.0  # a bound on the test, not a measured figure: the change arrives long before, or never

# Another process: waits for the test's word, then claims and finishes the prediction.
WRITER = """
import sys
from vace.server.store import SUCCEEDED, Store
store = Store(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
job = store.claim("elsewhere", 30.0)
assert job is not None and job.id == sys.argv[2], job
store.finish(job.id, "elsewhere", SUCCEEDED, output={"path": f"outputs/{job.id}.mp4"})
"""


def test_a_change_by_another_process_reaches_waiters_through_notify(postgres, tmp_path: Path):
    url = postgres.new_database()
    store = Store(url)
    service = PredictionService(store, ServiceConfig(data_dir=tmp_path, public_url="https://h:1",
                                                     change_poll_s=HOUR_S))
    assert service.feed.announced and service.feed.fallback_s == HOUR_S and service.feed.recheck_s == HOUR_S
    pred = store.insert(Prediction(id=new_id(), endpoint="vace/tiny", version="", dialect="replicate", model="tiny",
                                   input={}, request=Job(GenerationRequest(prompt="p")).to_dict(), status=QUEUED))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, pred.id], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    async def run() -> tuple[list[str], Prediction]:
        await service.start()
        try:
            assert await asyncio.to_thread(service.feed.listening.wait, BOUND_S)  # the LISTEN is in place
            stream = service.updates(pred.id)  # what an SSE response iterates
            assert (await anext(stream)).status == QUEUED  # subscribed from here on
            long_poll = asyncio.create_task(service.wait(pred.id, BOUND_S))
            await asyncio.sleep(0)  # the long poll subscribes too
            assert await asyncio.to_thread(writer.stdout.readline) == "ready\n"
            writer.stdin.write("go\n")
            writer.stdin.flush()

            async def follow() -> list[str]:
                return [p.status async for p in stream]

            seen = await asyncio.wait_for(follow(), BOUND_S)
            return seen, await long_poll
        finally:
            await service.stop()

    try:
        seen, waited = asyncio.run(run())
    except BaseException:
        writer.kill()  # it may be waiting for a "go" that never came
        writer.wait(10)
        raise
    finally:
        writer.stdin.close()
        store.close()
    assert writer.wait(60) == 0
    assert seen[-1] == SUCCEEDED and set(seen) <= {PROCESSING, SUCCEEDED}
    assert waited.status == SUCCEEDED and waited.output == {"path": f"outputs/{pred.id}.mp4"}


def test_a_cancel_after_deadline_is_kept_without_the_fallback_read(postgres, tmp_path: Path):
    """With changes announced the feed reads rarely; a Cancel-After deadline is a wake-up of its own."""
    store = Store(postgres.new_database())
    service = PredictionService(store, ServiceConfig(data_dir=tmp_path, public_url="https://h:1",
                                                     change_poll_s=HOUR_S))

    async def run() -> Prediction:
        await service.start()
        try:
            assert await asyncio.to_thread(service.feed.listening.wait, BOUND_S)
            pred = store.insert(Prediction(
                id=new_id(), endpoint="vace/tiny", version="", dialect="replicate", model="tiny", input={},
                request=Job(GenerationRequest(prompt="p")).to_dict(), status=QUEUED, cancel_at=time.time() + 1.0))
            return await service.wait(pred.id, BOUND_S)
        finally:
            await service.stop()

    try:
        waited = asyncio.run(run())
    finally:
        store.close()
    assert waited.status == CANCELED and "Cancel-After deadline reached" in waited.logs


def test_the_app_wakes_its_worker_on_create_only_where_the_database_does_not_announce(postgres, tiny_model_dir: Path,
                                                                                     tmp_path: Path):
    """On PostgreSQL the workers wait on the database's announcement, not on the supervisor's wake-up."""
    for url, wakes in ((postgres.new_database(), False), (None, True)):
        app = create_app(ServeSettings(model=[f"tiny={tiny_model_dir}"], data_dir=tmp_path / str(wakes),
                                       database_url=url, public_url="https://h:1"))
        try:
            assert (app.state.service.on_created == app.state.supervisor.wake) is wakes
        finally:
            app.state.store.close()
