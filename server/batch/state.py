"""The batch's state file: an append-only JSONL journal in the output folder.

The first record describes the batch (its random id, what it runs on); every later record is one row's
change (`{"row": id, ...fields}`), written and flushed to disk before the step it announces, so a batch
killed at any point resumes from what the journal says. Reading replays the records in order; a torn last
line (the process died while writing it) is ignored.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "batch-state.jsonl"

PENDING, SUBMITTING, SUBMITTED, SUCCEEDED, FAILED, CANCELED = (
    "pending", "submitting", "submitted", "succeeded", "failed", "canceled")
FINISHED = (SUCCEEDED, FAILED, CANCELED)


class StateError(Exception):
    """The state file belongs to another batch, or a row changed since it was rendered."""


@dataclass
class RowState:
    """Everything recorded about one row (the union of its journal records)."""

    id: str
    status: str = PENDING
    attempt: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


class BatchState:
    """The journal of one output folder. Thread-safe: the submit loop's workers record concurrently."""

    def __init__(self, out_dir: Path, header: dict[str, Any], rows: dict[str, RowState]):
        self.out_dir = out_dir
        self.header = header
        self.rows = rows
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.out_dir / STATE_FILE

    @property
    def batch_id(self) -> str:
        return self.header["batch"]

    @classmethod
    def load(cls, out_dir: str | Path) -> BatchState | None:
        """The folder's state, or None when it has none."""
        out_dir = Path(out_dir)
        path = out_dir / STATE_FILE
        if not path.is_file():
            return None
        records = list(_records(path))
        if not records or "batch" not in records[0]:
            raise StateError(f"{path} is not a vace batch state file")
        rows: dict[str, RowState] = {}
        for record in records[1:]:
            row_id = record.pop("row", None)
            if row_id is None:
                continue
            state = rows.setdefault(row_id, RowState(row_id))
            state.status = record.pop("status", state.status)
            state.attempt = record.pop("attempt", state.attempt)
            record.pop("at", None)
            state.fields.update(record)
        return cls(out_dir, records[0], rows)

    @classmethod
    def open(cls, out_dir: str | Path, **header: Any) -> BatchState:
        """Load the folder's state, or start one with a new batch id and `header` (mode, server, model, ...)."""
        out_dir = Path(out_dir)
        _drop_torn_tail(out_dir / STATE_FILE)
        existing = cls.load(out_dir)
        if existing is not None:
            return existing
        out_dir.mkdir(parents=True, exist_ok=True)
        state = cls(out_dir, {"batch": secrets.token_hex(8), "created_at": time.time(), **header}, {})
        state._append(state.header)
        return state

    def row(self, row_id: str) -> RowState:
        with self._lock:
            return self.rows.setdefault(row_id, RowState(row_id))

    def record(self, row_id: str, status: str | None = None, **fields: Any) -> RowState:
        """Write one change of a row to disk, then apply it in memory."""
        entry: dict[str, Any] = {"row": row_id, "at": round(time.time(), 3)}
        if status is not None:
            entry["status"] = status
        entry.update(fields)
        with self._lock:
            self._append(entry)
            state = self.rows.setdefault(row_id, RowState(row_id))
            if status is not None:
                state.status = status
            state.attempt = fields.pop("attempt", state.attempt)
            state.fields.update(fields)
            return state

    def _append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _records(path: Path) -> Iterator[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            yield json.loads(text)
        except json.JSONDecodeError:
            if number == len(lines):  # torn by a kill mid-write; the step it announced never happened
                return
            raise StateError(f"{path}:{number}: not a JSON record") from None


def _drop_torn_tail(path: Path) -> None:
    """Cut a last record without its newline (a kill mid-write) so the next record starts on a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
