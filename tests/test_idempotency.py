"""Idempotent creates: a repeated key finds the first prediction, in the store and through the API."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from vace.pipelines.job.request import GenerationRequest
from vace.server.store import QUEUED, Prediction, Store, new_id


def prediction(key: str | None, prompt: str = "p") -> Prediction:
    return Prediction(id=new_id(), endpoint="vace/tiny", version="", dialect="replicate", model="tiny",
                      input={"prompt": prompt}, request=GenerationRequest(prompt=prompt).to_dict(), status=QUEUED,
                      idempotency_key=key)


def test_a_repeated_key_returns_the_first_row(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    first, created = store.insert_once(prediction("tenant:k1", "first"))
    again, created_again = store.insert_once(prediction("tenant:k1", "second"))
    other, created_other = store.insert_once(prediction("tenant:k2"))
    assert created and not created_again and created_other
    assert again.id == first.id and again.input == {"prompt": "first"}
    assert other.id != first.id
    assert len(store.page()) == 2
    # Without a key every create is new.
    assert store.insert_once(prediction(None))[1] and store.insert_once(prediction(None))[1]


def test_concurrent_creates_with_one_key_store_one_row(database_url: str):
    url = database_url
    Store(url).close()
    results: list[str] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        store = Store(url)
        barrier.wait()
        results.append(store.insert_once(prediction("t:same"))[0].id)
        store.close()

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 1
    assert len(Store(url).page()) == 1


def test_an_old_database_gains_the_column_and_its_unique_index(tmp_path: Path):
    path = tmp_path / "old.sqlite"
    store = Store(f"sqlite:///{path}")
    store.insert(prediction(None))
    store.close()
    with sqlite3.connect(path) as conn:  # as a database from before the column existed (the revision before it)
        conn.execute("DROP INDEX ix_predictions_idempotency_key")
        conn.execute("ALTER TABLE predictions DROP COLUMN idempotency_key")
        conn.execute("ALTER TABLE predictions DROP COLUMN log_times")  # added after 0004 too (0008)
        conn.execute("UPDATE alembic_version SET version_num = '0004'")
    upgraded = Store(f"sqlite:///{path}")
    first, _ = upgraded.insert_once(prediction("t:k"))
    assert upgraded.insert_once(prediction("t:k"))[0].id == first.id
    with sqlite3.connect(path) as conn:
        indexes = {row[1]: row[2] for row in conn.execute("PRAGMA index_list(predictions)")}
    assert indexes["ix_predictions_idempotency_key"] == 1  # unique
