"""Store: exact admission under concurrency, one change sequence in commit order, tenants' rows apart."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vace.pipelines.job.request import GenerationRequest
from vace.server.store import QUEUED, SUCCEEDED, AdmissionRefused, Prediction, Store, StoredFile, new_id


def prediction(owner: str | None = None) -> Prediction:
    return Prediction(id=new_id(), endpoint="vace/tiny", version="", dialect="replicate", model="tiny",
                      input={"prompt": "p"}, request=GenerationRequest(prompt="p").to_dict(), status=QUEUED,
                      owner=owner)


def test_concurrent_creates_admit_exactly_the_queue_cap(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    stores = [Store(url) for _ in range(4)]  # four engines: like four API processes on one database

    def create(i: int) -> bool:
        try:
            stores[i % 4].insert(prediction(), queue_max=100)
            return True
        except AdmissionRefused:
            return False

    with ThreadPoolExecutor(16) as pool:
        admitted = list(pool.map(create, range(200)))
    assert admitted.count(True) == 100
    assert stores[0].count_active()[QUEUED] == 100


def test_changes_are_numbered_in_commit_order(tmp_path: Path):
    """A write that waits on another transaction's lock gets its number when it gets the lock, so a reader that
    moved past every number it saw still sees it (no look-back window to fall out of)."""
    db = tmp_path / "db.sqlite"
    store = Store(f"sqlite:///{db}")
    pred = store.insert(prediction())
    claimed = store.claim("w1", 30.0)
    assert claimed is not None and claimed.id == pred.id
    cursor = store.last_change()
    assert [p.id for p in store.changes_after(cursor - 1)] == [pred.id]

    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
    finished = threading.Event()
    thread = threading.Thread(target=lambda: (store.finish(pred.id, "w1", SUCCEEDED), finished.set()))
    thread.start()
    assert not finished.wait(0.3)  # the finish is waiting on the lock
    assert store.changes_after(cursor) == []
    blocker.execute("COMMIT")
    thread.join()
    changes = store.changes_after(cursor)
    assert [(p.id, p.status) for p in changes] == [(pred.id, SUCCEEDED)]
    assert changes[0].change_seq == cursor + 1 == store.last_change()
    blocker.close()


def test_tenants_list_only_their_own(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    a = store.insert(prediction("tenant-a"))
    b = store.insert(prediction("tenant-b"))
    assert [p.id for p in store.page(owner="tenant-a")] == [a.id]
    assert [p.id for p in store.page(owner="tenant-b")] == [b.id]
    assert {p.id for p in store.page()} == {a.id, b.id}  # the admin view
    for owner in ("tenant-a", "tenant-b"):
        store.insert_file(StoredFile(id=new_id(), name="f", content_type="image/png", size=1, sha256="0" * 64,
                                     md5="0" * 32, metadata={}, created_at=0.0, expires_at=None, path="files/f",
                                     owner=owner))
    assert [f.owner for f in store.list_files(owner="tenant-a")] == ["tenant-a"]
    assert len(store.list_files()) == 2


def test_an_old_database_gains_the_new_columns(tmp_path: Path):
    db = tmp_path / "db.sqlite"
    Store(f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX ix_predictions_change_seq")
        conn.execute("ALTER TABLE predictions DROP COLUMN change_seq")
        conn.execute("DROP TABLE counters")
        conn.execute("ALTER TABLE predictions DROP COLUMN log_times")  # added after 0005 too (0008)
        conn.execute("UPDATE alembic_version SET version_num = '0005'")  # the revision before these
    store = Store(f"sqlite:///{db}")
    assert store.insert(prediction()).change_seq == 1


@pytest.mark.parametrize("queue_max", [0, 1])
def test_a_full_queue_stores_nothing(tmp_path: Path, queue_max: int):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    if queue_max:
        store.insert(prediction(), queue_max=queue_max)
    with pytest.raises(AdmissionRefused) as info:
        store.insert(prediction(), queue_max=queue_max)
    assert info.value.queued == queue_max
    assert len(store.page()) == queue_max


def test_start_and_completion_enter_the_webhook_outbox_with_the_change(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    hooked = prediction()
    hooked.webhook = "https://hooks.example/x"
    hooked = store.insert(hooked)
    store.insert(prediction())  # no webhook: no outbox rows
    assert store.claim("w1", 30.0).id == hooked.id
    assert store.finish(hooked.id, "w1", SUCCEEDED, output={"path": "outputs/x.mp4"})
    plain = store.claim("w1", 30.0)
    store.finish(plain.id, "w1", SUCCEEDED)
    due = store.outbox_due(now=1e12)
    assert [(e.prediction_id, e.event) for e in due] == [(hooked.id, "start"), (hooked.id, "completed")]
    store.outbox_record(due[0].id, "sent", 1, due[0].next_at)
    store.outbox_record(due[1].id, "pending", 1, next_at=5e11, error="HTTP 503")
    assert [e.event for e in Store(store.url).outbox_due(now=1e12)] == ["completed"]  # a new process sees it
    assert store.outbox_due(now=4e11) == [] and store.outbox_next_at() == 5e11
    assert store.outbox_claim(due[1].id, now=6e11, hold_s=60.0)
    assert not Store(store.url).outbox_claim(due[1].id, now=6e11, hold_s=60.0)  # another process: taken
    assert store.outbox_next_at() == 6e11 + 60.0
