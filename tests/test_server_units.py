"""In-process checks of the store (SQLite and PostgreSQL), webhook signing/events, the Replicate header parsers."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from vace.pipelines.engine.render_cap import capped_request
from vace.pipelines.job.job import Job
from vace.pipelines.job.request import GenerationRequest
from vace.server.api.replicate.routes import parse_duration, parse_prefer_wait
from vace.server.api.replicate.schema import catalog
from vace.server.service.errors import InvalidInput
from vace.server.service.predictions import PredictionService, ServiceConfig
from vace.server.service.webhooks import sign_standard_webhook, webhook_events_between
from vace.server.settings import ServeSettings
from vace.server.store import CANCELED, FAILED, PROCESSING, QUEUED, SUCCEEDED, Prediction, Store, new_id
from vace.server.worker.runner import progress_line
from vace.server.worker.store_writes import StoreWrites


@pytest.fixture()
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    yield store
    store.close()


def queued(store: Store, n: int = 1, **request: object) -> list[str]:
    """`n` queued tiny-model predictions (prompts "0", "1", ...; `request`: more GenerationRequest fields)."""
    ids = []
    for i in range(n):
        pred = Prediction(id=new_id(), endpoint="vace/tiny", version="", dialect="replicate", model="tiny",
                          input={"prompt": str(i)}, request=GenerationRequest(prompt=str(i), **request).to_dict(),
                          status=QUEUED)
        ids.append(store.insert(pred).id)
    return ids


def test_ids_are_26_char_lowercase_base32():
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 26 and i == i.lower() and i.isalnum() for i in ids)


def test_claims_are_fifo_and_never_shared(store: Store):
    ids = queued(store, 12)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        other = Store(store.url)
        while (job := other.claim(name, 30)) is not None:
            with lock:
                claimed.append(job.id)
        other.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == 12
    assert store.claim("late", 30) is None


def test_writes_need_the_lease(store: Store):
    (pid,) = queued(store)
    job = store.claim("w1", 30)
    assert job.id == pid and job.status == PROCESSING and job.started_at
    assert store.report(pid, "w1", logs="step 1/2\n")
    assert not store.report(pid, "intruder", logs="nope")
    assert store.report(pid, "w1", progress=0.0)  # denoising started
    assert store.lose_held("worker died", owner="w1").failed == [pid]
    assert not store.finish(pid, "w1", SUCCEEDED, output={"path": "x"})  # lease gone: outcome kept
    final = store.get(pid)
    assert final.status == FAILED and final.output is None
    assert final.error == "worker died while this prediction was running; it was not retried"


def test_a_job_lost_before_denoising_is_requeued_once(database_url: str):
    store = Store(database_url)
    a, b = queued(store, 2)
    store.claim("w1", 30)
    assert store.lose_held("w1 died", owner="w2").requeued == []  # only the lost worker's jobs
    lost = store.lose_held("w1 died", owner="w1")
    assert (lost.requeued, lost.failed) == ([a], [])
    again = store.get(a)
    assert again.status == QUEUED and again.requeues == 1 and again.lease_owner is None and again.started_at is None
    assert again.logs == "requeued: w1 died before this prediction started denoising\n"
    store.close()
    store = Store(database_url)  # the count is on the row: a restarted server does not requeue it a second time
    assert store.claim("w3", 30).id == a  # its place in the queue kept
    lost = store.lose_held("interrupted: the server stopped")
    assert (lost.requeued, lost.failed) == ([], [a])
    final = store.get(a)
    assert final.status == FAILED and final.requeues == 1
    assert final.error == ("interrupted: the server stopped before this prediction started denoising, after it had "
                           "been requeued once for the same reason; it was not retried again")
    assert store.get(b).status == QUEUED
    store.close()


def test_a_lost_job_whose_cancel_was_asked_is_canceled_not_requeued(store: Store):
    a, b = queued(store, 2)
    store.claim("w1", 30)
    store.request_cancel(a)  # asked while it was still preparing (no progress yet), then the worker died
    lost = store.lose_held("w1 died", owner="w1")
    assert (lost.canceled, lost.requeued, lost.failed) == ([a], [], [])
    final = store.get(a)
    assert final.status == CANCELED and final.requeues == 0 and final.lease_owner is None and final.error is None
    assert final.logs == "canceled: w1 died after the cancel was asked for\n"
    assert store.claim("w2", 30).id == b  # not run again


def test_cancel_queued_at_once_running_by_flag(store: Store):
    a, b = queued(store, 2)
    store.claim("w1", 30)
    assert store.request_cancel(b).status == CANCELED
    running = store.request_cancel(a)
    assert running.status == PROCESSING and store.cancel_requested(a)


def test_requeue_on_stop_keeps_fifo_position(store: Store):
    a, b = queued(store, 2)
    store.claim("w1", 30)
    assert store.requeue_held("w1", "requeued") == [a]
    assert store.claim("w2", 30).id == a


def test_list_cursors_walk_both_ways(tmp_path: Path, store: Store):
    ids = queued(store, 7)
    svc = PredictionService(store, ServiceConfig(data_dir=tmp_path / "data", public_url="https://x"))
    page1 = svc.list(limit=3)
    page2 = svc.list(page1.next_cursor, limit=3)
    page3 = svc.list(page2.next_cursor, limit=3)
    assert [p.id for p in page1.results + page2.results + page3.results] == ids[::-1]
    assert page1.previous_cursor is None and page3.next_cursor is None
    assert [p.id for p in svc.list(page3.previous_cursor, limit=3).results] == [p.id for p in page2.results]
    with pytest.raises(InvalidInput):
        svc.list("%%%")
    with pytest.raises(InvalidInput):  # too large for the database: was an OverflowError (HTTP 500)
        svc.list(_cursor_for("b", 10**23))


def _cursor_for(kind: str, seq: int) -> str:
    import base64

    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


@pytest.mark.parametrize("field_name", ["video", "webhook"])
@pytest.mark.parametrize("url", ["http://[::1", "https://example.com:99999/a.mp4", "http://example.com:x/a"])
def test_malformed_urls_are_invalid_input_not_a_crash(tmp_path: Path, store: Store, field_name: str, url: str):
    svc = PredictionService(store, ServiceConfig(data_dir=tmp_path / "data", public_url="https://x",
                                                 own_netlocs={"127.0.0.1:8000"}))
    media = {"video": url} if field_name == "video" else {}
    webhook = url if field_name == "webhook" else None
    with pytest.raises(InvalidInput) as info:
        asyncio.run(svc.create(endpoint="vace/tiny", model="tiny", job=Job(GenerationRequest(prompt="a", **media)),
                               input={}, dialect="replicate", webhook=webhook))
    assert info.value.errors[0][0] == field_name and "malformed URL" in info.value.errors[0][1]


def test_standard_webhook_signature_verifies():
    from standardwebhooks.webhooks import Webhook

    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = json.dumps({"id": "abc"}).encode()
    import time

    ts = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(ts),
               "webhook-signature": sign_standard_webhook(secret, "msg_1", ts, body)}
    assert Webhook(secret).verify(body, headers) == {"id": "abc"}


def _pred(**kw) -> Prediction:
    base = dict(id="p", endpoint="e", version="", dialect="replicate", model="m", input={}, request={},
                status=QUEUED)
    return Prediction(**{**base, **kw})


def test_webhook_events_from_state_changes():
    start = _pred(status=PROCESSING, started_at=1.0)
    assert webhook_events_between(None, start) == ["start"]
    logs = _pred(status=PROCESSING, started_at=1.0, logs="step 1/2\n")
    assert webhook_events_between(start, logs) == ["logs"]
    done = _pred(status=SUCCEEDED, started_at=1.0, logs="step 1/2\n", output={"path": "outputs/p.mp4"})
    assert webhook_events_between(logs, done) == ["output", "completed"]
    assert webhook_events_between(None, done) == ["start", "logs", "output", "completed"]
    assert webhook_events_between(None, _pred(status=CANCELED)) == ["completed"]  # canceled while queued


def test_start_webhook_describes_the_start_even_when_first_seen_finished(tmp_path: Path, store: Store):
    """A job shorter than one change-feed tick is first seen succeeded: its `start` event must still say
    processing with no output, and `output`/`completed` carry the result."""
    service = PredictionService(store, ServiceConfig(data_dir=tmp_path / "data", public_url="http://127.0.0.1:1"))
    sent: list[tuple[str, Prediction]] = []
    service.webhooks.enqueue = lambda pred, event, outbox=None: sent.append((event, pred))  # type: ignore
    done = _pred(status=SUCCEEDED, started_at=1.0, completed_at=2.0, output={"path": "outputs/p.mp4"},
                 metrics={"predict_time": 1.0}, webhook="http://example.com/h",
                 webhook_events=["start", "output", "completed"])
    service.webhooks.schedule(done, ["start", "output", "completed"])
    service.webhooks._outbox_at = None  # nothing pending in the outbox: the tick sends the held events at once
    service.webhooks.on_tick(False)
    assert [e for e, _ in sent] == ["start", "output", "completed"]
    start = sent[0][1]
    assert start.status == PROCESSING and start.output is None and start.completed_at is None
    assert start.metrics is None and start.id == done.id
    assert sent[1][1] is done and sent[2][1] is done


def test_replicate_header_parsers():
    assert parse_prefer_wait("wait") == 60 and parse_prefer_wait("wait=5") == 5
    assert parse_prefer_wait("wait=600") == 60 and parse_prefer_wait(None) is None
    assert parse_duration("30s") == 30 and parse_duration("5m") == 300 and parse_duration("1h30m") == 5400
    with pytest.raises(InvalidInput):
        parse_duration("soon")


def test_prunaai_translation():
    model = catalog(["tiny"])["prunaai/vace-14b"]
    req = model.to_request({"prompt": "p", "src_video": "https://a/v.mp4", "src_mask": "https://a/m.png",
                            "size": "480*832", "frame_num": 33, "sample_solver": "dpm++",
                            "speed_mode": "Extra Juiced 🚀 (even more speed)"})
    assert (req.width, req.height, req.num_frames, req.sampler, req.steps, req.guidance, req.shift, req.seed) == (
        480, 832, 33, "dpm++", 50, 5.0, 16.0, -1)
    assert req.video and req.mask and req.preset != "none"
    assert model.field_name("num_frames") == "frame_num" and model.field_name("reference_images[1]") == \
        "src_ref_images[1]"
    with pytest.raises(InvalidInput) as err:
        model.to_request({"prompt": "p", "src_ref_images": ["a", "b", "c", "d"]})
    assert err.value.errors[0][0] == "src_ref_images"


def test_render_cap_and_progress_line():
    req = GenerationRequest(prompt="p", width=832, height=480)
    small = capped_request(req, 64)
    assert (small.width, small.height) == (64, 32) and capped_request(req, None) is req
    line = progress_line(3, 4)
    assert line.startswith(" 75%|") and "| 3/4" in line and "step 3/4" in line


def test_serve_refuses_a_public_address_without_an_api_key(tmp_path: Path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "vace.server.cli", "serve", "--host", "0.0.0.0", "--port", "1",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2 and "without an API key" in result.stderr


def test_serve_refuses_port_0_without_a_public_url(tmp_path: Path):
    """Port 0 made every output and upload URL read http://127.0.0.1:0/...: refused up front."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "vace.server.cli", "serve", "--port", "0",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2 and "--port 0" in result.stderr


def test_tiny_only_servers_cap_renders_by_default():
    from vace.pipelines.engine.render_cap import TINY_RENDER_SIDE
    from vace.server.serve import tiny_render_side

    assert tiny_render_side([], None) == TINY_RENDER_SIDE  # no --model = tiny
    assert tiny_render_side(["tiny", "demo=tiny-a14b"], None) == TINY_RENDER_SIDE
    assert tiny_render_side(["tiny", "/srv/weights/Wan2.1-VACE-14B"], None) == 0
    assert tiny_render_side(["tiny"], 0) == 0 and tiny_render_side(["tiny"], 64) == 64


def test_a_poll_after_stop_never_replaces_the_worker(store: Store, monkeypatch: pytest.MonkeyPatch):
    """The supervise thread can still be polling when shutdown stops the worker: it must not start another."""
    from vace.server.worker.config import WorkerConfig
    from vace.server.worker.supervisor import WorkerSupervisor

    class DeadProcess:
        pid, exitcode = 4242, -15

        def is_alive(self) -> bool:
            return False

    sup = WorkerSupervisor(store, WorkerConfig(settings=ServeSettings(model=["tiny=x"], data_dir="unused"),
                                               database_url=store.url))
    started: list[bool] = []
    monkeypatch.setattr(sup, "start", lambda: started.append(True))
    sup.process = DeadProcess()
    assert sup.pid == 4242
    sup._stopping = True  # what stop() sets (with the poll lock held) before it ends the process
    sup.poll()
    assert sup.pid == 4242 and sup.restarts == 0 and not started
    sup._stopping = False
    sup.poll()  # not stopping: the dead worker is replaced
    assert sup.pid is None and sup.restarts == 1 and started == [True]


def test_a_requeued_job_keeps_its_log_without_a_blank_line(tmp_path: Path, store: Store):
    from vace.server.worker.config import WorkerConfig
    from vace.server.worker.pool import ModelPool
    from vace.server.worker.runner import JobRunner

    [pid] = queued(store)
    store.claim("w1", 30)
    store.requeue_held("w1", "requeued: the server stopped")
    config = WorkerConfig(settings=ServeSettings(data_dir=tmp_path), database_url=store.url, worker_id="w2")
    job = store.claim("w2", 30)
    assert JobRunner(store, ModelPool(config), config).run(job) == FAILED  # no such model: fails at once
    logs = store.get(pid).logs
    assert logs.startswith("requeued: the server stopped\nKeyError") and "\n\n" not in logs


class _ReportLog(Store):
    """A real store that also keeps every progress write it was given."""

    def __init__(self, url: str):
        super().__init__(url)
        self.reports: list[dict] = []

    def report(self, prediction_id: str, owner: str, **values: object) -> bool:
        self.reports.append(values)
        return super().report(prediction_id, owner, **values)


def test_each_preview_is_written_with_its_steps_progress(tmp_path: Path, database_url: str, tiny_model_dir: Path):
    """Progress writes are throttled, previews are not: a preview carries its own step's progress, so a page never
    shows a preview of step 3 beside a bar still at 0."""
    from vace.server.worker.config import WorkerConfig
    from vace.server.worker.pool import ModelPool
    from vace.server.worker.runner import JobRunner

    store = _ReportLog(database_url)
    try:
        queued(store, width=32, height=32, num_frames=5, steps=4)
        config = WorkerConfig(settings=ServeSettings(data_dir=tmp_path, model=[f"tiny={tiny_model_dir}"]),
                              database_url=store.url, worker_id="w1")
        assert JobRunner(store, ModelPool(config), config).run(store.claim("w1", 30)) == SUCCEEDED
    finally:
        store.close()
    previews = [r for r in store.reports if "preview" in r]
    assert [(r["preview"]["step"], r["progress"]) for r in previews] == [(1, 25.0), (2, 50.0), (3, 75.0), (4, 100.0)]


def test_the_watch_reads_each_change_once_in_sequence_order(tmp_path: Path, store: Store):
    import time

    a, b = queued(store, 2)
    svc = PredictionService(store, ServiceConfig(data_dir=tmp_path / "data", public_url="https://x"))
    first = svc.feed.read(time.time())
    assert [p.id for p in first] == [a, b]
    assert svc.feed.read(time.time()) == []  # the cursor moved past them: nothing is read twice
    store.claim("w1", 30)
    [changed] = svc.feed.read(time.time())
    assert changed.id == a and changed.status == PROCESSING and changed.input == {"prompt": "0"}


def test_list_cursors_stop_exactly_at_both_ends(tmp_path: Path, store: Store):
    ids = queued(store, 6)[::-1]  # newest first
    svc = PredictionService(store, ServiceConfig(data_dir=tmp_path / "data", public_url="https://x"))
    page1 = svc.list(limit=3)
    page2 = svc.list(page1.next_cursor, limit=3)
    assert [p.id for p in page2.results] == ids[3:] and page2.next_cursor is None and page2.previous_cursor
    back = svc.list(page2.previous_cursor, limit=3)
    assert [p.id for p in back.results] == ids[:3] and back.previous_cursor is None and back.next_cursor
    assert [p.id for p in svc.list(back.next_cursor, limit=3).results] == ids[3:]


def test_job_log_stamps_each_line_and_fal_reports_them():
    from vace.server.api.fal.routes import log_entries
    from vace.server.worker.job_log import JobLog

    log = JobLog("requeued: worker restarted\n", None, since=100.0)
    log.append("model: tiny; seed: 1")
    log.append("step 1\nstep 2\n")
    fields = log.fields()
    assert fields["logs"] == "requeued: worker restarted\nmodel: tiny; seed: 1\nstep 1\nstep 2\n"
    assert fields["log_times"][0] == 100.0 and len(fields["log_times"]) == 4
    assert fields["log_times"][1] > 100.0 and fields["log_times"] == sorted(fields["log_times"])
    pred = Prediction(id="p", endpoint="e", version="", dialect="fal", model="tiny", input={}, request={},
                      status=PROCESSING, logs=fields["logs"] + "canceled\n", log_times=[1.0, 2.0, 3.0, 4.0],
                      updated_at=5.0)
    stamps = [e["timestamp"] for e in log_entries(pred)]
    assert stamps == [datetime.fromtimestamp(t, timezone.utc).isoformat() for t in (1.0, 2.0, 3.0, 4.0, 5.0)]


def test_tiny_only_servers_check_safety_with_the_tiny_checker_by_default(tmp_path, tiny_home):
    from vace.server.serve import tiny_safety_checker

    assert tiny_safety_checker([], None) == "tiny" and tiny_safety_checker(["demo=tiny-a14b"], None) == "tiny"
    assert tiny_safety_checker(["/srv/weights/Wan2.1-VACE-14B"], None) is None
    assert tiny_safety_checker(["tiny"], "none") == "none"  # the operator's choice stands
    assert ServeSettings(safety_checker="none", data_dir=tmp_path).safety().checker is None
    assert ServeSettings(safety_checker="tiny", data_dir=tmp_path).safety().checker == tiny_home / "safety-checker"


def test_bad_serve_values_name_the_flag_and_variable():
    from vace.server.cli import build_parser
    from vace.server.settings import from_flags

    args = build_parser().parse_args(["serve", "--port", "99999", "--queue-max", "0", "--no-compile"])
    with pytest.raises(ValueError) as info:
        from_flags(args)
    assert str(info.value) == ("--port (VACE_PORT): Input should be less than or equal to 65535; --queue-max "
                               "(VACE_QUEUE_MAX): Input should be greater than or equal to 1")
    good = from_flags(build_parser().parse_args(["serve", "--no-compile", "--api-key", "a", "--api-key", "b"]))
    assert good.compile is False and good.api_keys == ["a", "b"]


def test_turbo_for_needs_a_distill_that_fits_and_maps_nothing_by_default(tmp_path: Path, tiny_model_dir: Path):
    """--turbo-for is refused at start without a --distill-lora (a served directory gets no tiny default) or with
    one made for another model; given neither flag, prunaai's fastest speed_mode keeps its documented level."""
    from vace.pipelines.fixtures.tiny_loras import write_lora
    from vace.server.cli import build_parser
    from vace.server.serve import resolve
    from vace.server.settings import from_flags

    extra = "Extra Juiced 🚀 (even more speed)"

    def settings(*flags: str) -> ServeSettings:
        return resolve(from_flags(build_parser().parse_args(["serve", "--data-dir", str(tmp_path), *flags])))

    assert settings("--model", "tiny").turbo_map() == {}
    assert catalog(["tiny"])["prunaai/vace-14b"].to_request({"prompt": "p", "speed_mode": extra}).preset == "regular"
    mapped = settings("--model", "tiny", "--turbo-for", f"replicate:{extra}", "--turbo-for", "fal:regular")
    assert mapped.turbo_map() == {"replicate": frozenset({extra}), "fal": frozenset({"regular"})}
    prunaai = catalog(["tiny"])["prunaai/vace-14b"]
    assert prunaai.to_request({"prompt": "p", "speed_mode": extra}, mapped.turbo_map()).preset == "turbo"
    with pytest.raises(ValueError, match="needs a step-distillation LoRA: give --distill-lora"):
        settings("--model", str(tiny_model_dir), "--turbo-for", "fal:regular")
    wide = write_lora(tmp_path / "wide.safetensors", "comfy", seed=3, dim=48)
    with pytest.raises(ValueError, match="fits every served model: .*does not fit model tiny"):
        settings("--model", "tiny", "--turbo-for", "fal:regular", "--distill-lora", str(wide))
    with pytest.raises(ValueError, match="--distill-lora-low-noise .* give --distill-lora too"):
        settings("--model", "tiny-a14b", "--distill-lora-low-noise", "tiny-style")  # even where a default exists
    pair = settings("--model", "tiny-a14b", "--distill-lora", "tiny-distill", "--distill-lora-low-noise",
                    "tiny-style").lora_config().distill
    assert [(s.name, s.expert) for s in pair.specs(two_experts=True)] == [("tiny-distill", "high_noise"),
                                                                         ("tiny-style", "low_noise")]
    with pytest.raises(ValueError, match=r"--turbo-for \(VACE_TURBO_FOR\): .*fal has no value 'high'"):
        settings("--turbo-for", "fal:high")


def test_store_writes_report_says_whether_the_job_is_still_held(store: Store):
    """The Ray feeder cancels a job on its actor when the store refuses its progress: the lease was taken away."""
    [a] = queued(store)
    store.claim("w1", 30)
    writes = StoreWrites(store)
    assert writes.report(a, "w1", progress=1.0) is True
    assert writes.report(a, "w2", progress=2.0) is False
    assert store.get(a).progress == 1.0
