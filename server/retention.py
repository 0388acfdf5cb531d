"""Retention: uploads expire, finished predictions lose their output files and report `data_removed` (in the data
dir or the bucket of --storage).

The sweep is cheap and bounded (at most `batch` files and `batch` predictions a pass, oldest first) and
never touches queued/processing predictions or any file a queued/processing prediction reads as an input.
Bytes are deleted before the rows are updated, so a crash mid-sweep leaves nothing orphaned: the next pass
finds the same rows again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vace.server.storage import Storage
from vace.server.store import Prediction, Store, StoredFile

log = logging.getLogger("vace.retention")

HOUR_S = 3600.0
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.5, 60.0


@dataclass(frozen=True)
class RetentionPolicy:
    """How long outputs and uploads are kept (None = forever)."""

    output_s: float | None = None
    file_s: float | None = None
    batch: int = 100

    @classmethod
    def from_hours(cls, output_hours: float, file_hours: float) -> RetentionPolicy:
        """`--output-retention-hours` / `--file-retention-hours`: 0 keeps forever; fractions are allowed."""
        for name, hours in (("--output-retention-hours", output_hours), ("--file-retention-hours", file_hours)):
            if not (math.isfinite(hours) and hours >= 0):
                raise ValueError(f"{name} must be 0 (keep forever) or a positive number of hours, got {hours}")
        return cls(output_s=output_hours * HOUR_S or None, file_s=file_hours * HOUR_S or None)

    def file_expiry(self, created_at: float) -> float | None:
        return created_at + self.file_s if self.file_s else None

    @property
    def interval_s(self) -> float:
        """How often to sweep: a quarter of the shortest retention, within 0.5..60 s."""
        spans = [s for s in (self.output_s, self.file_s) if s]
        return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, min(spans) / 4)) if spans else MAX_INTERVAL_S


@dataclass
class SweepReport:
    files: list[str] = field(default_factory=list)  # upload ids deleted
    predictions: list[str] = field(default_factory=list)  # prediction ids marked data_removed
    kept: list[str] = field(default_factory=list)  # ids due but still an input of a queued/processing prediction
    full: bool = False  # a batch was full: more may be due right away


def stored_refs(value: Any, storage: Storage) -> Iterator[str]:
    """The storage key of every string in a request (at any depth) that names a stored object."""
    if isinstance(value, str):
        rel = storage.rel_of(value)
        if rel is not None:
            yield rel
    elif isinstance(value, dict):
        for item in value.values():
            yield from stored_refs(item, storage)
    elif isinstance(value, list):
        for item in value:
            yield from stored_refs(item, storage)


def owned_outputs(pred: Prediction, storage: Storage) -> set[str]:
    """The keys a prediction owns under outputs/: its recorded outputs and anything named after its id."""
    output = pred.output or {}
    rels = [output.get("path"), (output.get("frames_zip") or {}).get("path")]
    owned = {rel for rel in rels if isinstance(rel, str) and rel.startswith("outputs/") and ".." not in rel}
    if pred.id.isalnum():
        owned.update(storage.list(f"outputs/{pred.id}"))
    return owned


def sweep(store: Store, storage: Storage, policy: RetentionPolicy, now: float) -> SweepReport:
    """One bounded pass: delete expired uploads and the outputs of predictions past the output retention."""
    report = SweepReport()
    referenced = {rel for request in store.active_requests() for rel in stored_refs(request, storage)}
    # Up to len(referenced) candidates may be skipped: fetch that many more so each pass makes progress.
    limit = policy.batch + len(referenced)
    expired = store.files_expired(now, limit)  # also those uploaded under an older policy
    report.full = len(expired) >= limit
    for record in expired:
        if len(report.files) >= policy.batch:
            break
        if _remove_file(store, storage, record, referenced):
            report.files.append(record.id)
        else:
            report.kept.append(record.id)
    if policy.output_s:
        due = store.outputs_due(now - policy.output_s, limit)
        report.full = report.full or len(due) >= limit
        for pred in due:
            if len(report.predictions) >= policy.batch:
                break
            owned = owned_outputs(pred, storage)
            if owned & referenced:
                report.kept.append(pred.id)
                continue
            for rel in owned:
                storage.delete(rel)
            if store.mark_data_removed(pred.id, now):
                report.predictions.append(pred.id)
    if report.files or report.predictions:
        log.info("retention removed %d upload(s) and the outputs of %d prediction(s)", len(report.files),
                 len(report.predictions))
    return report


def _remove_file(store: Store, storage: Storage, record: StoredFile, referenced: set[str]) -> bool:
    if record.path in referenced:
        return False
    storage.delete(record.path)
    store.delete_file(record.id)
    return True
