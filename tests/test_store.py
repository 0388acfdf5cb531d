"""The store on SQLite and on a real PostgreSQL server: migrations, concurrent claims, LISTEN/NOTIFY."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from vace.pipelines.job.request import MAX_SEED, GenerationRequest
from vace.server.migrations.upgrade import current_revision, head_revision
from vace.server.store import PROCESSING, QUEUED, Prediction, Store, metadata, new_id
from vace.server.store_listen import CHANGES_CHANNEL, QUEUE_CHANNEL


@pytest.fixture()
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    yield store
    store.close()


def queued(store: Store, n: int = 1, model: str = "tiny") -> list[str]:
    return [store.insert(Prediction(id=new_id(), endpoint="vace/tiny", version="", dialect="replicate", model=model,
                                    input={"prompt": str(i)}, request=GenerationRequest(prompt=str(i)).to_dict(),
                                    status=QUEUED)).id
            for i in range(n)]


def test_the_migrated_schema_is_the_one_the_store_uses(store: Store):
    with store.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_stores_opened_together_migrate_once(database_url: str):
    """Processes starting side by side (two API servers, their workers) all open the store at once."""
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(database_url).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = Store(database_url)
    with store.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    store.close()


# The tables as the first release created them (SQLAlchemy's create_all on SQLite), before alembic.
FIRST_RELEASE_SQLITE = """
CREATE TABLE predictions (
    seq INTEGER NOT NULL, id VARCHAR(32) NOT NULL, endpoint VARCHAR(200) NOT NULL, version VARCHAR(100) NOT NULL,
    dialect VARCHAR(32) NOT NULL, model VARCHAR(200) NOT NULL, input JSON NOT NULL, request JSON NOT NULL,
    status VARCHAR(16) NOT NULL, logs TEXT NOT NULL, progress FLOAT, output JSON, error TEXT, metrics JSON,
    seed INTEGER, created_at FLOAT NOT NULL, started_at FLOAT, completed_at FLOAT, updated_at FLOAT NOT NULL,
    rev INTEGER NOT NULL, webhook TEXT, webhook_events JSON, cancel_requested BOOLEAN NOT NULL, cancel_at FLOAT,
    lease_owner VARCHAR(100), lease_expires FLOAT, extra JSON, PRIMARY KEY (seq));
CREATE UNIQUE INDEX ix_predictions_id ON predictions (id);
CREATE INDEX ix_predictions_status ON predictions (status);
CREATE INDEX ix_predictions_updated_at ON predictions (updated_at);
CREATE INDEX ix_predictions_lease_owner ON predictions (lease_owner);
CREATE TABLE files (
    seq INTEGER NOT NULL, id VARCHAR(32) NOT NULL, name VARCHAR(500) NOT NULL, content_type VARCHAR(200) NOT NULL,
    size INTEGER NOT NULL, sha256 VARCHAR(64) NOT NULL, md5 VARCHAR(32) NOT NULL, metadata JSON NOT NULL,
    created_at FLOAT NOT NULL, expires_at FLOAT, path TEXT NOT NULL, PRIMARY KEY (seq));
CREATE UNIQUE INDEX ix_files_id ON files (id);
INSERT INTO predictions (id, endpoint, version, dialect, model, input, request, status, logs, created_at,
    updated_at, rev, cancel_requested, seed)
VALUES ('oldjob', 'vace/tiny', '', 'replicate', 'tiny', '{"prompt": "old"}', '{"prompt": "old"}', 'succeeded',
    'done\n', 1.0, 2.0, 3, 0, 7);
"""


def test_a_first_release_sqlite_data_dir_upgrades_in_place(tmp_path: Path):
    path = tmp_path / "vace.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(FIRST_RELEASE_SQLITE)
    store = Store(f"sqlite:///{path}")
    old = store.get("oldjob")
    assert old.status == "succeeded" and old.input == {"prompt": "old"} and old.rev == 3 and old.seed == 7
    assert old.data_removed_at is None
    with store.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    assert {i["name"] for i in inspect(store.engine).get_indexes("predictions")} >= {"ix_predictions_id",
                                                                                      "ix_predictions_status"}
    [new] = queued(store)
    assert store.claim("w", 30).id == new
    store.close()


def test_seeds_up_to_the_largest_fit(store: Store):
    [pid] = queued(store)
    store.claim("w", 30)
    assert store.report(pid, "w", seed=MAX_SEED)
    assert store.get(pid).seed == MAX_SEED


def test_many_claimers_take_each_job_exactly_once(store: Store):
    """Eight threads, each with its own store (its own connections), drain 60 jobs."""
    ids = queued(store, 60)
    claimed: dict[str, list[str]] = {}
    lock = threading.Lock()

    def worker(name: str) -> None:
        mine = Store(store.url)
        while (job := mine.claim(name, 30)) is not None:
            assert job.status == PROCESSING and job.lease_owner == name
            with lock:
                claimed.setdefault(job.id, []).append(name)
        mine.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
    assert all(len(owners) == 1 for owners in claimed.values())


def test_claims_skip_models_not_served(store: Store):
    [other] = queued(store, model="other")
    [mine] = queued(store, model="tiny")
    assert store.claim("w", 30, models=["tiny"]).id == mine
    assert store.claim("w", 30, models=["tiny"]) is None
    assert store.get(other).status == QUEUED


def test_postgres_announces_queued_jobs_and_new_revisions(postgres):
    store = Store(postgres.new_database())
    queue = store.listener(QUEUE_CHANNEL, poll_s=0.1)
    changes = store.listener(CHANGES_CHANNEL, poll_s=0.1)
    assert queue.pushes and changes.pushes
    [pid] = queued(store)
    assert queue.wait(10) == ["tiny"]
    assert changes.wait(10) == [pid]
    store.claim("w", 30)
    assert changes.wait(10) == [pid]
    assert store.heartbeat(pid, "w", 30)  # a lease renewal is no change: nothing announced
    store.report(pid, "w", progress=50.0)
    assert changes.wait(10) == [pid]
    store.requeue_held("w", "requeued")
    assert queue.wait(10) == ["tiny"]  # claimable again
    assert changes.wait(10) == [pid]
    assert queue.wait(0.2) == [] and changes.wait(0.2) == []
    queue.close()
    changes.close()
    store.close()


def test_sqlite_listeners_poll(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    listener = store.listener(QUEUE_CHANNEL, poll_s=0.05)
    queued(store)
    assert not listener.pushes and listener.wait(10) == []  # returns after one poll interval, not 10 s
    store.close()
