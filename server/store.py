"""Persistent predictions and uploaded files (SQLAlchemy Core): a SQLite file by default, PostgreSQL for several
API processes and machines (the `[postgres]` extra). The schema is migrated by alembic (server/migrations/).

Statuses are dialect-free: queued -> processing -> succeeded | failed | canceled.
A worker takes a job with `claim()` (on PostgreSQL a row lock that concurrent claimers skip) and holds a
lease it renews with `heartbeat()`; every write a worker makes is guarded by its lease, so a worker whose job
was taken away (recovery, crash) cannot overwrite the outcome.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from vace.pipelines.job.job import Job
from vace.server.migrations.upgrade import upgrade_database
from vace.server.store_listen import Listener

QUEUED, PROCESSING, SUCCEEDED, FAILED, CANCELED = "queued", "processing", "succeeded", "failed", "canceled"
TERMINAL = (SUCCEEDED, FAILED, CANCELED)
MAX_REQUEUES = 1  # a job lost before it started denoising goes back to the queue this many times at most
SETTLE_PASSES = 3  # lose_held reads again what changed under it, at most this many times in all

metadata = MetaData()

predictions = Table(
    "predictions", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), unique=True, nullable=False, index=True),
    Column("endpoint", String(200), nullable=False),  # the model/endpoint name the client addressed
    Column("version", String(100), nullable=False, default=""),
    Column("dialect", String(32), nullable=False, default=""),  # which API created it (webhook format)
    Column("model", String(200), nullable=False),  # the served model that runs it
    Column("input", JSON, nullable=False),  # the input as the client sent it
    Column("request", JSON, nullable=False),  # GenerationRequest.to_dict()
    Column("status", String(16), nullable=False, index=True),
    Column("logs", Text, nullable=False, default=""),
    Column("progress", Float, nullable=True),  # percentage 0..100
    Column("output", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("metrics", JSON, nullable=True),
    Column("seed", BigInteger, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("completed_at", Float, nullable=True, index=True),
    Column("updated_at", Float, nullable=False, index=True),
    Column("rev", Integer, nullable=False, default=0),
    Column("webhook", Text, nullable=True),
    Column("webhook_events", JSON, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("cancel_at", Float, nullable=True),
    Column("lease_owner", String(100), nullable=True, index=True),
    Column("lease_expires", Float, nullable=True),
    Column("extra", JSON, nullable=True),  # dialect-specific bookkeeping (e.g. sync mode, endpoint path)
    Column("data_removed_at", Float, nullable=True),
    # "<tenant>:<client key>" of a create sent with an idempotency key; unique, so a repeat finds the first.
    Column("idempotency_key", String(300), nullable=True),
    Index("ix_predictions_idempotency_key", "idempotency_key", unique=True),
    # The tenant: which API key created it (server.auth.key_owner; None = no keys configured).
    Column("owner", String(64), nullable=True, index=True),
    # Where its latest change stands in the one change sequence (see Store._next_change).
    Column("change_seq", Integer, nullable=True, index=True),
    # The latest live preview while it denoises: {step, total, image (a JPEG data: URI), width, height}.
    Column("preview", JSON, nullable=True),
    # The unix time of each line of `logs` the worker wrote (lines the store appends itself have none).
    Column("log_times", JSON, nullable=True),
    # How many times the job went back to the queue because its worker was lost before it started denoising.
    Column("requeues", Integer, nullable=False, default=0, server_default="0"),
)

files = Table(
    "files", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), unique=True, nullable=False, index=True),
    Column("name", String(500), nullable=False),
    Column("content_type", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("md5", String(32), nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("path", Text, nullable=False),  # relative to the data dir
    Column("owner", String(64), nullable=True, index=True),  # the tenant, as on predictions
)


# Named counters. Bumping one takes a write lock on its row until the transaction ends, so the values are handed
# out in commit order: a reader of `change_seq > n` can never see a higher number commit before a lower one.
counters = Table(
    "counters", metadata,
    Column("name", String(32), primary_key=True),
    Column("value", Integer, nullable=False),
)
CHANGE = "change"

# Webhook events that must never be lost, written in the same transaction as the state change that makes them
# (a prediction's start and its completion); the dispatcher delivers them, and its retries survive restarts.
webhook_outbox = Table(
    "webhook_outbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("prediction_id", String(32), nullable=False, index=True),
    Column("event", String(16), nullable=False),
    Column("state", String(16), nullable=False, index=True),  # pending | sent | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_error", Text, nullable=True),
)
PENDING, SENT, GAVE_UP = "pending", "sent", "failed"


@dataclass
class OutboxEvent:
    """One row of the webhook outbox."""

    id: int
    prediction_id: str
    event: str
    state: str
    attempts: int
    next_at: float
    created_at: float
    last_error: str | None = None


@dataclass
class LostJobs:
    """What Store.lose_held did with the jobs of a lost worker."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)


class AdmissionRefused(Exception):
    """insert() found the queue full: `queued` predictions were waiting."""

    def __init__(self, queued: int):
        super().__init__(f"{queued} predictions queued")
        self.queued = queued


def new_id() -> str:
    """Lowercase base32 of a random 128-bit value, no padding (26 characters)."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


@dataclass
class Prediction:
    """One row of the predictions table."""

    id: str
    endpoint: str
    version: str
    dialect: str
    model: str
    input: dict[str, Any]
    request: dict[str, Any]  # the Job (request + delivery options), Job.to_dict()
    status: str
    logs: str = ""
    progress: float | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    metrics: dict[str, Any] | None = None
    seed: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    updated_at: float = 0.0
    rev: int = 0
    webhook: str | None = None
    webhook_events: list[str] | None = None
    cancel_requested: bool = False
    cancel_at: float | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    data_removed_at: float | None = None
    idempotency_key: str | None = None
    owner: str | None = None
    change_seq: int | None = None
    preview: dict[str, Any] | None = None
    log_times: list[float] | None = None
    requeues: int = 0
    seq: int = 0

    @property
    def job(self) -> Job:
        return Job.from_dict(self.request, self.extra)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def data_removed(self) -> bool:
        return self.data_removed_at is not None

    @classmethod
    def from_row(cls, row: Any) -> Prediction:
        data = dict(row._mapping)
        data["extra"] = data.get("extra") or {}
        return cls(**data)


@dataclass
class StoredFile:
    id: str
    name: str
    content_type: str
    size: int
    sha256: str
    md5: str
    metadata: dict[str, Any]
    created_at: float
    expires_at: float | None
    path: str
    owner: str | None = None
    seq: int = 0

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    @classmethod
    def from_row(cls, row: Any) -> StoredFile:
        return cls(**dict(row._mapping))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def database_url(data_dir: str | Path, configured: str | None = None) -> str:
    """The configured URL (--database-url), else the SQLite file in the data dir."""
    return configured or f"sqlite:///{Path(data_dir).resolve() / 'vace.db'}"


class Store:
    """All reads and writes of predictions and files. Safe to use from several processes."""

    def __init__(self, url: str):
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:
            kwargs["pool_pre_ping"] = True  # a database server restart leaves dead connections in the pool
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.queries = 0  # statements sent, for /health (the idle load of the queue)
        event.listen(self.engine, "before_cursor_execute", self._count)
        upgrade_database(self.engine)

    def _count(self, *_: Any) -> None:
        self.queries += 1

    @property
    def single_host(self) -> bool:
        """True when the database is a local file, so no worker outside this machine can hold a lease."""
        return self.url.startswith("sqlite")

    def close(self) -> None:
        self.engine.dispose()

    def listener(self, channel: str, poll_s: float) -> Listener:
        """Waits for announcements on `channel` (store_listen's QUEUE_CHANNEL / CHANGES_CHANNEL) on PostgreSQL,
        or for `poll_s` on SQLite. One per thread: it holds a connection of its own."""
        return Listener(self.url, channel, poll_s)

    # ---- predictions -------------------------------------------------------------------------------------------

    def insert(self, pred: Prediction, queue_max: int | None = None) -> Prediction:
        """Store a new prediction; with `queue_max`, only while fewer than that many are queued (AdmissionRefused
        otherwise). The count and the insert are one transaction behind the change-counter lock, so concurrent
        creates can never admit more than `queue_max`."""
        now = time.time()
        pred.created_at = pred.created_at or now
        pred.updated_at = now
        values = {k: v for k, v in pred.__dict__.items() if k != "seq"}
        with self.engine.begin() as conn:
            values["change_seq"] = self._next_change(conn)
            if queue_max is not None:
                queued = conn.execute(select(func.count()).where(predictions.c.status == QUEUED)).scalar() or 0
                if queued >= queue_max:
                    raise AdmissionRefused(int(queued))
            conn.execute(predictions.insert().values(**values))
        return self.get(pred.id)  # type: ignore[return-value]

    @staticmethod
    def _next_change(conn: Any) -> int:
        """The next number of the change sequence, taken inside the caller's transaction (the counter row stays
        locked until it commits). The first statement of its transaction, so SQLite takes its write lock before
        the transaction reads anything."""
        return int(conn.execute(update(counters).where(counters.c.name == CHANGE)
                                .values(value=counters.c.value + 1).returning(counters.c.value)).scalar_one())

    def last_change(self) -> int:
        """The newest number handed out in the change sequence."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(counters.c.value).where(counters.c.name == CHANGE)).scalar() or 0)

    def changes_after(self, change_seq: int, limit: int = 500) -> list[Prediction]:
        """Predictions whose latest change is numbered after `change_seq`, in sequence order."""
        query = (select(predictions).where(predictions.c.change_seq > change_seq)
                 .order_by(predictions.c.change_seq.asc()).limit(limit))
        with self.engine.connect() as conn:
            return [Prediction.from_row(r) for r in conn.execute(query).all()]

    def insert_once(self, pred: Prediction, queue_max: int | None = None) -> tuple[Prediction, bool]:
        """Insert unless a prediction with the same idempotency key exists: (the stored one, whether it is new).
        The unique index decides, so two concurrent creates with one key store one row (the service looks the key
        up before validating; this is the race between that look-up and the insert)."""
        try:
            return self.insert(pred, queue_max), True
        except IntegrityError:
            first = self.get_by_idempotency_key(pred.idempotency_key) if pred.idempotency_key else None
            if first is None:
                raise
            return first, False

    def get_by_idempotency_key(self, key: str) -> Prediction | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(predictions).where(predictions.c.idempotency_key == key)).first()
        return Prediction.from_row(row) if row else None

    def get(self, prediction_id: str) -> Prediction | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(predictions).where(predictions.c.id == prediction_id)).first()
        return Prediction.from_row(row) if row else None

    def delete(self, prediction_id: str) -> bool:
        """Remove a finished prediction's row (fal's sync_mode keeps no history)."""
        with self.engine.begin() as conn:
            return bool(conn.execute(predictions.delete().where(and_(
                predictions.c.id == prediction_id, predictions.c.status.in_(TERMINAL)))).rowcount)

    def page(self, before_seq: int | None = None, after_seq: int | None = None, limit: int = 100,
             endpoint_prefix: str | None = None, owner: str | None = None,
             statuses: tuple[str, ...] | None = None) -> list[Prediction]:
        """Newest first. `before_seq` pages towards older rows, `after_seq` towards newer ones; with `owner`,
        only that tenant's predictions; with `statuses`, only those in one of them."""
        query = select(predictions)
        if owner is not None:
            query = query.where(predictions.c.owner == owner)
        if endpoint_prefix:
            query = query.where(predictions.c.endpoint.startswith(endpoint_prefix))
        if statuses is not None:
            query = query.where(predictions.c.status.in_(statuses))
        if after_seq is not None:
            query = query.where(predictions.c.seq > after_seq).order_by(predictions.c.seq.asc()).limit(limit)
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            return [Prediction.from_row(r) for r in reversed(rows)]
        if before_seq is not None:
            query = query.where(predictions.c.seq < before_seq)
        query = query.order_by(predictions.c.seq.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [Prediction.from_row(r) for r in conn.execute(query).all()]

    def active(self, limit: int = 1000) -> list[Prediction]:
        """Queued and processing predictions, oldest first (the order workers take them)."""
        query = (select(predictions).where(predictions.c.status.in_((QUEUED, PROCESSING)))
                 .order_by(predictions.c.seq.asc()).limit(limit))
        with self.engine.connect() as conn:
            return [Prediction.from_row(r) for r in conn.execute(query).all()]

    def lease_owners(self) -> set[str]:
        """The workers holding a running prediction."""
        query = select(predictions.c.lease_owner).where(and_(predictions.c.status == PROCESSING,
                                                             predictions.c.lease_owner.is_not(None)))
        with self.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def count_active(self) -> dict[str, int]:
        query = (select(predictions.c.status, func.count())
                 .where(predictions.c.status.in_((QUEUED, PROCESSING))).group_by(predictions.c.status))
        with self.engine.connect() as conn:
            counts = dict(conn.execute(query).all())
        return {QUEUED: counts.get(QUEUED, 0), PROCESSING: counts.get(PROCESSING, 0)}

    def recent_completions(self, limit: int = 20) -> list[float]:
        """completed_at of the newest `limit` predictions a worker finished (succeeded or failed), newest first."""
        query = (select(predictions.c.completed_at)
                 .where(and_(predictions.c.status.in_((SUCCEEDED, FAILED)), predictions.c.started_at.is_not(None),
                             predictions.c.completed_at.is_not(None)))
                 .order_by(predictions.c.completed_at.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [float(v) for v in conn.execute(query).scalars()]

    def queue_position(self, pred: Prediction) -> int:
        """How many queued predictions are ahead of this one (0 = next)."""
        query = select(func.count()).where(and_(predictions.c.status == QUEUED, predictions.c.seq < pred.seq))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def _update(self, where: Any, event: tuple[str, str] | None = None, **values: Any) -> int:
        """Update the rows `where` selects as one change (its own transaction)."""
        with self.engine.begin() as conn:
            return self._update_in(conn, self._next_change(conn), where, event, **values)

    @staticmethod
    def _update_in(conn: Connection, change_seq: int, where: Any, event: tuple[str, str] | None = None,
                   **values: Any) -> int:
        """Update the rows `where` selects as change `change_seq`, inside the caller's transaction (which took that
        number as its first statement); `event` = (prediction id, webhook event) goes into the webhook outbox in
        the same transaction when the update changed the row and it has a webhook."""
        values["updated_at"] = now = time.time()
        values["rev"] = predictions.c.rev + 1
        values["change_seq"] = change_seq
        count = conn.execute(update(predictions).where(where).values(**values)).rowcount
        if count and event is not None:
            pid, name = event
            conn.execute(webhook_outbox.insert().from_select(
                ["prediction_id", "event", "state", "attempts", "next_at", "created_at"],
                select(predictions.c.id, literal(name), literal(PENDING), literal(0), literal(now), literal(now))
                .where(and_(predictions.c.id == pid, predictions.c.webhook.is_not(None)))))
        return count

    # ---- webhook outbox ----------------------------------------------------------------------------------------

    def outbox_due(self, now: float, limit: int = 100) -> list[OutboxEvent]:
        """Pending events whose next attempt is due, oldest first."""
        query = (select(webhook_outbox).where(and_(webhook_outbox.c.state == PENDING, webhook_outbox.c.next_at <= now))
                 .order_by(webhook_outbox.c.id.asc()).limit(limit))
        with self.engine.connect() as conn:
            return [OutboxEvent(**dict(r._mapping)) for r in conn.execute(query).all()]

    def outbox_next_at(self) -> float | None:
        """When the earliest pending event is due (None: nothing pending)."""
        query = select(func.min(webhook_outbox.c.next_at)).where(webhook_outbox.c.state == PENDING)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def outbox_claim(self, event_id: int, now: float, hold_s: float) -> bool:
        """Take a due event for `hold_s` seconds (no other API process sends it meanwhile); False if taken."""
        with self.engine.begin() as conn:
            return bool(conn.execute(update(webhook_outbox).where(and_(
                webhook_outbox.c.id == event_id, webhook_outbox.c.state == PENDING, webhook_outbox.c.next_at <= now))
                .values(next_at=now + hold_s)).rowcount)

    def outbox_record(self, event_id: int, state: str, attempts: int, next_at: float,
                      error: str | None = None) -> None:
        """The outcome of one delivery attempt: sent, given up, or pending again from `next_at`."""
        with self.engine.begin() as conn:
            conn.execute(update(webhook_outbox).where(webhook_outbox.c.id == event_id)
                         .values(state=state, attempts=attempts, next_at=next_at, last_error=error))

    def claim(self, owner: str, lease_s: float, models: list[str] | None = None) -> Prediction | None:
        """Take the oldest queued prediction (optionally only for `models`), or None.

        A plain read first, so an idle worker's poll writes nothing. Then one transaction: the change number
        (every prediction write takes it first, so locks are always taken in the same order), the candidate row
        locked FOR UPDATE SKIP LOCKED on PostgreSQL (a claimer never waits on a row another one holds), and the
        update that hands it to `owner`."""
        query = select(predictions.c.id).where(predictions.c.status == QUEUED)
        if models is not None:
            query = query.where(predictions.c.model.in_(models))
        query = query.order_by(predictions.c.seq.asc()).limit(1)
        with self.engine.connect() as conn:
            if conn.execute(query).scalar() is None:
                return None
        with self.engine.begin() as conn:
            change_seq = self._next_change(conn)
            candidate = conn.execute(query.with_for_update(skip_locked=True)).scalar()
            if candidate is None:
                return None
            now = time.time()
            taken = self._update_in(conn, change_seq, and_(predictions.c.id == candidate,
                                                           predictions.c.status == QUEUED),
                                    event=(candidate, "start"), status=PROCESSING, started_at=now,
                                    lease_owner=owner, lease_expires=now + lease_s)
        return self.get(candidate) if taken else None

    def heartbeat(self, prediction_id: str, owner: str, lease_s: float) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(update(predictions).where(self._held(prediction_id, owner))
                                .values(lease_expires=time.time() + lease_s)).rowcount
        return bool(done)

    @staticmethod
    def _held(prediction_id: str, owner: str) -> Any:
        return and_(predictions.c.id == prediction_id, predictions.c.lease_owner == owner,
                    predictions.c.status == PROCESSING)

    def report(self, prediction_id: str, owner: str, **values: Any) -> bool:
        """A worker's progress write (logs, progress, seed, ...); ignored unless it still holds the lease."""
        return bool(self._update(self._held(prediction_id, owner), **values))

    def finish(self, prediction_id: str, owner: str, status: str, **values: Any) -> bool:
        """A worker's final write: terminal status, release the lease."""
        assert status in TERMINAL
        return bool(self._update(self._held(prediction_id, owner), event=(prediction_id, "completed"),
                                 status=status, completed_at=time.time(),
                                 lease_owner=None, lease_expires=None, **values))

    def cancel_requested(self, prediction_id: str) -> bool:
        with self.engine.connect() as conn:
            value = conn.execute(select(predictions.c.cancel_requested)
                                 .where(predictions.c.id == prediction_id)).scalar()
        return bool(value)

    def request_cancel(self, prediction_id: str, reason: str = "canceled") -> Prediction | None:
        """Queued: canceled at once. Processing: flagged; the worker stops at the next step."""
        now = time.time()
        self._update(and_(predictions.c.id == prediction_id, predictions.c.status == QUEUED),
                     event=(prediction_id, "completed"),
                     status=CANCELED, completed_at=now, cancel_requested=True, logs=predictions.c.logs + f"{reason}\n")
        self._update(and_(predictions.c.id == prediction_id, predictions.c.status == PROCESSING,
                          predictions.c.cancel_requested.is_(False)), cancel_requested=True)
        return self.get(prediction_id)

    def due_for_cancel(self, now: float) -> list[str]:
        query = select(predictions.c.id).where(and_(
            predictions.c.cancel_at.is_not(None), predictions.c.cancel_at <= now,
            predictions.c.status.in_((QUEUED, PROCESSING)), predictions.c.cancel_requested.is_(False)))
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def lose_held(self, cause: str, owner: str | None = None, expired_before: float | None = None) -> LostJobs:
        """Settle the processing predictions whose worker was lost (`cause` says how): those held by `owner`, those
        whose lease expired, or (neither given) all of them. One whose cancel was asked for is canceled. One that had
        not started denoising (no progress reported yet) goes back to its place in the queue once, counted on its row
        so a restart cannot requeue it again; any other fails with an error naming the cause. Both executors and the
        server's start call this."""
        where = predictions.c.status == PROCESSING
        if owner is not None:
            where = and_(where, predictions.c.lease_owner == owner)
        if expired_before is not None:
            where = and_(where, or_(predictions.c.lease_expires.is_(None),
                                    predictions.c.lease_expires < expired_before))
        columns = (predictions.c.id, predictions.c.lease_owner, predictions.c.progress,
                   predictions.c.cancel_requested, predictions.c.requeues)
        lost = LostJobs()
        for _ in range(SETTLE_PASSES):  # a row that changed between its read and its update (a cancel came in) is
            with self.engine.connect() as conn:  # read again; what was settled no longer matches `where`
                held = conn.execute(select(*columns).where(where)).all()
            if not held:
                break
            for row in held:
                self._settle_lost(row, cause, lost)
        return lost

    def _settle_lost(self, row: Any, cause: str, lost: LostJobs) -> None:
        """One row of lose_held, guarded by the values read, so it changes nothing if the row moved on since."""
        pid, holder, progress, cancel, requeues = row
        same_run = and_(predictions.c.id == pid, predictions.c.status == PROCESSING,
                        predictions.c.lease_owner.is_(None) if holder is None else predictions.c.lease_owner == holder,
                        predictions.c.cancel_requested.is_(bool(cancel)))
        released = {"lease_owner": None, "lease_expires": None}
        if cancel:
            note = f"canceled: {cause} after the cancel was asked for"
            if self._update(same_run, event=(pid, "completed"), status=CANCELED, completed_at=time.time(),
                            logs=predictions.c.logs + f"{note}\n", **released):
                lost.canceled.append(pid)
        elif progress is None and requeues < MAX_REQUEUES:
            note = f"requeued: {cause} before this prediction started denoising"
            if self._update(and_(same_run, predictions.c.progress.is_(None)), status=QUEUED,
                            requeues=predictions.c.requeues + 1, started_at=None,
                            logs=predictions.c.logs + f"{note}\n", **released):
                lost.requeued.append(pid)
        else:
            error = (f"{cause} while this prediction was running; it was not retried" if progress is not None else
                     f"{cause} before this prediction started denoising, after it had been requeued once for "
                     "the same reason; it was not retried again")
            if self._update(same_run, event=(pid, "completed"), status=FAILED, error=error,
                            completed_at=time.time(), logs=predictions.c.logs + f"{error}\n", **released):
                lost.failed.append(pid)

    def requeue_held(self, owner: str, note: str) -> list[str]:
        """Put a stopping worker's job back at its place in the queue."""
        where = and_(predictions.c.status == PROCESSING, predictions.c.lease_owner == owner)
        with self.engine.connect() as conn:
            ids = list(conn.execute(select(predictions.c.id).where(where)).scalars())
        for pid in ids:
            self._update(and_(predictions.c.id == pid, predictions.c.status == PROCESSING), status=QUEUED,
                         started_at=None, lease_owner=None, lease_expires=None, progress=None,
                         logs=predictions.c.logs + f"{note}\n")
        return ids

    # ---- retention ---------------------------------------------------------------------------------------------

    def active_requests(self) -> list[dict[str, Any]]:
        """The requests of queued and processing predictions (what their inputs point at)."""
        query = select(predictions.c.request).where(predictions.c.status.in_((QUEUED, PROCESSING)))
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def outputs_due(self, finished_before: float, limit: int) -> list[Prediction]:
        """Terminal predictions finished before the cutoff whose outputs are not yet removed, oldest first."""
        finished = func.coalesce(predictions.c.completed_at, predictions.c.created_at)
        query = (select(predictions).where(and_(predictions.c.status.in_(TERMINAL),
                                                predictions.c.data_removed_at.is_(None),
                                                finished < finished_before))
                 .order_by(finished.asc()).limit(limit))
        with self.engine.connect() as conn:
            return [Prediction.from_row(r) for r in conn.execute(query).all()]

    def mark_data_removed(self, prediction_id: str, now: float) -> bool:
        """Record that retention removed the outputs. Not a change event: updated_at and rev stay (no webhooks)."""
        with self.engine.begin() as conn:
            return bool(conn.execute(update(predictions).where(and_(
                predictions.c.id == prediction_id, predictions.c.status.in_(TERMINAL)))
                .values(data_removed_at=now)).rowcount)

    def files_expired(self, now: float, limit: int) -> list[StoredFile]:
        query = (select(files).where(and_(files.c.expires_at.is_not(None), files.c.expires_at <= now))
                 .order_by(files.c.expires_at.asc()).limit(limit))
        with self.engine.connect() as conn:
            return [StoredFile.from_row(r) for r in conn.execute(query).all()]

    # ---- files -------------------------------------------------------------------------------------------------

    def insert_file(self, record: StoredFile) -> StoredFile:
        values = {k: v for k, v in record.__dict__.items() if k != "seq"}
        with self.engine.begin() as conn:
            conn.execute(files.insert().values(**values))
        return self.get_file(record.id)  # type: ignore[return-value]

    def get_file(self, file_id: str) -> StoredFile | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(files).where(files.c.id == file_id)).first()
        return StoredFile.from_row(row) if row else None

    def list_files(self, limit: int = 100, now: float | None = None, owner: str | None = None) -> list[StoredFile]:
        """Newest first; with `now`, only the files not expired by then; with `owner`, only that tenant's."""
        query = select(files)
        if owner is not None:
            query = query.where(files.c.owner == owner)
        if now is not None:
            query = query.where(or_(files.c.expires_at.is_(None), files.c.expires_at > now))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(files.c.seq.desc()).limit(limit)).all()
        return [StoredFile.from_row(r) for r in rows]

    def delete_file(self, file_id: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(files.delete().where(files.c.id == file_id)).rowcount)
