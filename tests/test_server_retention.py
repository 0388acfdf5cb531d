"""Retention: uploads expire, finished predictions lose their outputs (data_removed); a controllable clock."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.server_process import Server, wait_for
from vace.pipelines.job.request import GenerationRequest
from vace.server.api.replicate.routes import file_json, prediction_json
from vace.server.retention import RetentionPolicy
from vace.server.service.errors import InvalidInput, NotFound
from vace.server.service.predictions import PredictionService, ServiceConfig
from vace.server.storage import ObjectStorage
from vace.server.store import FAILED, PROCESSING, QUEUED, SUCCEEDED, Prediction, Store, new_id, predictions

HOUR = 3600.0
T0 = 1_700_000_000.0
PUBLIC = "https://vace.test"


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["data-dir", "s3"])
def service(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> PredictionService:
    """The service keeping files in its data dir, then (the same test again) in a bucket on a real S3 server."""
    storage = None
    if request.param == "s3":
        s3 = request.getfixturevalue("object_store")
        storage = ObjectStorage(s3.new_bucket(), s3.options)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    config = ServiceConfig(data_dir=tmp_path / "data", public_url=PUBLIC, own_netlocs={"vace.test"},
                           retention=RetentionPolicy.from_hours(2, 1), clock=clock, storage=storage)
    return PredictionService(store, config)


def stored(service: PredictionService, rel: str) -> bool:
    return service.storage.size(rel) is not None


def add(service: PredictionService, status: str, completed_at: float | None = None, request: dict | None = None,
        outputs: tuple[str, ...] = ()) -> Prediction:
    """A prediction row in `status` with output files named `<id><suffix>` written under outputs/."""
    pid = new_id()
    output = None
    for suffix in outputs:
        service.storage.put_bytes(f"outputs/{pid}{suffix}", b"x")
    if outputs:
        output = {"path": f"outputs/{pid}{outputs[0]}"}
        if "-frames.zip" in outputs:
            output["frames_zip"] = {"path": f"outputs/{pid}-frames.zip"}
    pred = Prediction(id=pid, endpoint="vace/tiny", version="", dialect="replicate", model="tiny", input={},
                      request=request or GenerationRequest(prompt="p").to_dict(), status=status, output=output,
                      created_at=(completed_at or T0) - 10, completed_at=completed_at)
    return service.store.insert(pred)


def owned(service: PredictionService, pred: Prediction) -> list[str]:
    return sorted(rel.removeprefix("outputs/") for rel in service.storage.list(f"outputs/{pred.id}"))


def test_policy_from_hours():
    policy = RetentionPolicy.from_hours(24, 0.5)
    assert policy.output_s == 24 * HOUR and policy.file_s == 1800
    assert policy.file_expiry(T0) == T0 + 1800
    forever = RetentionPolicy.from_hours(0, 0)
    assert forever.output_s is None and forever.file_expiry(T0) is None
    assert RetentionPolicy.from_hours(0.0005, 0).interval_s == 0.5  # 1.8 s retention: sweep twice a second
    assert RetentionPolicy.from_hours(24, 24).interval_s == 60
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="retention-hours"):
            RetentionPolicy.from_hours(bad, 1)


def test_upload_expires_then_is_gone(service: PredictionService, clock: Clock):
    record = service.files.save("in.png", "image/png", b"png-bytes")
    assert record.created_at == T0 and record.expires_at == T0 + HOUR
    assert file_json(record, PUBLIC)["expires_at"] == "2023-11-14T23:13:20.000000Z"
    url = f"{PUBLIC}/v1/files/{record.id}/download"
    assert service.urls.resolve_media(url, "video") == service.files.ref(record)
    assert service.storage.read_bytes(record.path) == b"png-bytes"

    clock.now = T0 + HOUR  # expired: 404 and refused as an input before the sweep has run
    with pytest.raises(NotFound, match="expired"):
        service.files.get(record.id)
    assert service.files.list() == []
    with pytest.raises(InvalidInput) as err:
        service.urls.resolve_media(url, "first_frame")
    assert err.value.errors[0][0] == "first_frame" and "expired" in err.value.errors[0][1]
    assert stored(service, record.path)

    assert service.sweep().files == [record.id]
    assert service.store.get_file(record.id) is None and not stored(service, record.path)


def test_forever_uploads_have_no_expiry(tmp_path: Path, clock: Clock):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    svc = PredictionService(store, ServiceConfig(data_dir=tmp_path / "d", public_url=PUBLIC, clock=clock,
                                                 retention=RetentionPolicy.from_hours(0, 0)))
    record = svc.files.save("a.txt", None, b"a")
    assert record.expires_at is None and file_json(record, PUBLIC)["expires_at"] is None
    clock.now += 1000 * HOUR
    assert svc.files.get(record.id) == record
    old = add(svc, SUCCEEDED, completed_at=T0, outputs=(".mp4",))
    report = svc.sweep()
    assert report.files == [] and report.predictions == [] and owned(svc, old) == [f"{old.id}.mp4"]


def test_sweep_removes_exactly_what_is_due(service: PredictionService, clock: Clock):
    clock.now = T0 + 3 * HOUR  # output retention 2 h: everything finished at T0 is due
    old = add(service, SUCCEEDED, completed_at=T0, outputs=(".mp4", "-frames.zip", "-extra.bin"))
    recent = add(service, SUCCEEDED, completed_at=T0 + 2 * HOUR, outputs=(".mp4",))
    failed = add(service, FAILED, completed_at=T0)
    chained = add(service, SUCCEEDED, completed_at=T0, outputs=(".mp4",))  # its output feeds a queued job
    clock.now = T0  # uploads made at T0 expire at T0 + 1 h
    used = service.files.save("used.png", "image/png", b"u")  # an input of a processing job
    unused = service.files.save("unused.png", "image/png", b"n")
    clock.now = T0 + 2.5 * HOUR
    fresh = service.files.save("fresh.png", "image/png", b"f")  # expires at T0 + 3.5 h
    clock.now = T0 + 3 * HOUR
    queued = add(service, QUEUED, request=GenerationRequest(
        prompt="p", video=service.storage.ref(f"outputs/{chained.id}.mp4")).to_dict())
    processing = add(service, QUEUED, request=GenerationRequest(
        prompt="p", reference_images=[service.files.ref(used)]).to_dict())
    assert service.store.claim("w1", 30).id == queued.id and service.store.claim("w2", 30).id == processing.id
    processing_outputs = f"outputs/{processing.id}.mp4"  # a render in progress
    service.storage.put_bytes(processing_outputs, b"partial")
    before = service.store.get(old.id)

    report = service.sweep()
    assert sorted(report.predictions) == sorted([old.id, failed.id])
    assert report.files == [unused.id] and sorted(report.kept) == sorted([chained.id, used.id])
    assert owned(service, old) == [] and service.store.get(old.id).data_removed_at == clock.now
    assert service.store.get(failed.id).data_removed
    for untouched in (recent, chained):
        assert owned(service, untouched) == [f"{untouched.id}.mp4"]
        assert not service.store.get(untouched.id).data_removed
    assert stored(service, processing_outputs)
    assert service.store.get(queued.id).status == PROCESSING and not service.store.get(processing.id).data_removed
    assert stored(service, used.path) and service.store.get_file(used.id)
    assert service.store.get_file(fresh.id) and not stored(service, unused.path)
    after = service.store.get(old.id)
    assert (after.rev, after.updated_at) == (before.rev, before.updated_at)  # no change event, no webhooks

    body = prediction_json(after, service, PUBLIC)
    assert body["data_removed"] is True and body["output"] is None and body["status"] == "succeeded"
    live = prediction_json(service.store.get(recent.id), service, PUBLIC)
    assert live["data_removed"] is False and live["output"] == f"{PUBLIC}/outputs/{recent.id}.mp4"
    assert service.urls.output_rel(f"{old.id}.mp4") is None
    assert service.urls.output_rel(f"{recent.id}.mp4") == f"outputs/{recent.id}.mp4"

    # The jobs finish: what they read is no longer protected and goes on the next pass.
    assert service.store.finish(queued.id, "w1", SUCCEEDED) and service.store.finish(processing.id, "w2", FAILED)
    report = service.sweep()
    assert report.predictions == [chained.id] and report.files == [used.id] and report.kept == []
    assert owned(service, chained) == [] and not stored(service, used.path)
    assert service.sweep().predictions == [] and stored(service, processing_outputs)  # just finished: not due yet
    clock.now = time.time() + 3 * HOUR  # finish() stamps the real time
    assert sorted(service.sweep().predictions) == sorted([recent.id, queued.id, processing.id])
    assert not stored(service, processing_outputs)


def test_sweep_work_is_bounded(tmp_path: Path, clock: Clock):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    svc = PredictionService(store, ServiceConfig(data_dir=tmp_path / "d", public_url=PUBLIC, clock=clock,
                                                 retention=RetentionPolicy(output_s=HOUR, file_s=HOUR, batch=2)))
    preds = [add(svc, SUCCEEDED, completed_at=T0 + i, outputs=(".mp4",)) for i in range(5)]
    clock.now = T0 + 2 * HOUR
    first = svc.sweep()
    assert first.predictions == [preds[0].id, preds[1].id] and first.full  # oldest first
    assert svc.sweep().predictions == [preds[2].id, preds[3].id]
    last = svc.sweep()
    assert last.predictions == [preds[4].id] and not last.full


def test_an_old_database_gains_the_column(tmp_path: Path):
    db = tmp_path / "old.sqlite"
    store = Store(f"sqlite:///{db}")
    pid = store.insert(Prediction(id=new_id(), endpoint="e", version="", dialect="replicate", model="m",
                                  input={}, request={}, status=SUCCEEDED)).id
    store.close()
    with sqlite3.connect(db) as conn:  # the schema as it was before retention (and before alembic)
        conn.execute("ALTER TABLE predictions DROP COLUMN data_removed_at")
        conn.execute("DROP TABLE alembic_version")
    with sqlite3.connect(db) as conn:
        assert "data_removed_at" not in [row[1] for row in conn.execute("PRAGMA table_info(predictions)")]
    upgraded = Store(f"sqlite:///{db}")
    assert upgraded.get(pid).data_removed_at is None
    assert upgraded.mark_data_removed(pid, T0) and upgraded.get(pid).data_removed
    upgraded.close()
    Store(f"sqlite:///{db}").close()  # idempotent on an up-to-date database


def test_fal_and_wavespeed_answer_a_clear_error(tmp_path: Path, tiny_model_dir: Path):
    from fastapi.testclient import TestClient

    from vace.server.api.fal.schema import WAN21_APP
    from vace.server.api.wavespeed.schema import MODEL_ID
    from vace.server.app import create_app
    from vace.server.settings import ServeSettings

    app = create_app(ServeSettings(model=[f"tiny={tiny_model_dir}"], data_dir=tmp_path, public_url="https://h:1",
                                  no_worker=True, output_retention_hours=1))
    service: PredictionService = app.state.service
    preds = {}
    for dialect, endpoint in (("fal", WAN21_APP), ("wavespeed", MODEL_ID)):
        pred = add(service, SUCCEEDED, completed_at=T0, outputs=(".mp4",))
        with service.store.engine.begin() as conn:
            conn.execute(predictions.update().where(predictions.c.id == pred.id)
                         .values(dialect=dialect, endpoint=endpoint))
        preds[dialect] = pred.id
    assert sorted(service.sweep(now=T0 + 2 * HOUR).predictions) == sorted(preds.values())
    client = TestClient(app)
    fal = client.get(f"/queue/{WAN21_APP}/requests/{preds['fal']}")
    assert fal.status_code == 410 and fal.json()["error_type"] == "request_data_removed"
    assert "retention" in fal.json()["detail"]
    status = client.get(f"/queue/{WAN21_APP}/requests/{preds['fal']}/status").json()
    assert status["status"] == "COMPLETED" and status["error_type"] == "request_data_removed"
    ws = client.get(f"/api/v3/predictions/{preds['wavespeed']}/result")
    assert ws.status_code == 410 and ws.json()["code"] == 410 and ws.json()["data"] is None
    assert "removed" in ws.json()["message"]
    gone = client.get(f"/outputs/{preds['fal']}.mp4")
    assert gone.status_code == 404 and gone.headers["content-type"] == "application/problem+json"


def test_live_server_removes_outputs_and_expires_uploads(tiny_model_dir: Path, tmp_path: Path):
    """Render and upload on a keep-forever server, then restart the same data dir with 1.8 s retention."""
    data = tmp_path / "data"
    keep = Server(data, args=["--model", "tiny", "--max-render-side", "64", "--output-retention-hours", "0",
                              "--file-retention-hours", "0"]).start()
    try:
        with keep.client() as http:
            kept = http.post("/v1/files", files={"content": ("a.txt", b"hello", "text/plain")}).json()
            assert kept["expires_at"] is None
            pid = http.post("/v1/models/vace/tiny/predictions", headers={"Prefer": "wait=1"}, json={"input": {
                "prompt": "a red square", "width": 64, "height": 64, "num_frames": 5, "steps": 1}}).json()["id"]
            done = wait_for(lambda: (p := http.get(f"/v1/predictions/{pid}").json())["completed_at"] and p,
                            "the render to complete")
            assert done["status"] == "succeeded" and done["data_removed"] is False
            assert http.get(f"/outputs/{pid}.mp4").status_code == 200
    finally:
        keep.stop()

    sweeping = Server(data, args=["--model", "tiny", "--no-worker", "--output-retention-hours", "0.0005",
                                  "--file-retention-hours", "0.0005"]).start()
    try:
        with sweeping.client() as http:
            fresh = http.post("/v1/files", files={"content": ("b.txt", b"bye", "text/plain")}).json()
            assert fresh["expires_at"] > fresh["created_at"]  # ISO 8601 UTC strings compare in time order
            removed = wait_for(lambda: (p := http.get(f"/v1/predictions/{pid}").json())["data_removed"] and p,
                               "retention to remove the output")
            assert removed["output"] is None and removed["status"] == "succeeded"
            gone = http.get(f"/outputs/{pid}.mp4")
            assert gone.status_code == 404 and gone.headers["content-type"] == "application/problem+json"
            assert gone.json()["status"] == 404
            assert not list((data / "outputs").glob(f"{pid}*"))

            wait_for(lambda: http.get(f"/v1/files/{fresh['id']}").status_code == 404, "the upload to expire")
            as_input = http.post("/v1/models/vace/tiny/predictions", json={"input": {
                "prompt": "p", "video": f"{sweeping.base_url}/v1/files/{fresh['id']}/download"}})
            assert as_input.status_code == 422, as_input.text
            assert as_input.json()["invalid_fields"][0]["field"] == "video"
            assert http.get(f"/v1/files/{kept['id']}").status_code == 200  # uploaded with no expiry: kept
    finally:
        sweeping.stop()
