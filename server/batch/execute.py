"""`vace batch run`: which rows still need work, and the two ways of doing it (a server, or locally).

Every step is journalled before it is taken (server/batch/state.py), so the same command run again after a
crash skips finished rows, re-attaches to predictions still queued or running, re-sends a create whose answer
was lost with the same idempotency key (the server answers with the first prediction), and retries failed rows
only when asked.
"""

from __future__ import annotations

import shutil
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from vace.pipelines.engine.loras import LoraConfig
from vace.pipelines.engine.render import Renderer
from vace.pipelines.job.request import GenerationRequest, RequestError
from vace.pipelines.media.fetch import FetchPolicy
from vace.server.batch.manifest import Manifest, Row, validated, with_local_media
from vace.server.batch.progress import BatchProgress, step_of
from vace.server.batch.remote import ServerClient, ServerError, idempotency_key
from vace.server.batch.state import (
    CANCELED,
    FAILED,
    PENDING,
    SUBMITTED,
    SUBMITTING,
    SUCCEEDED,
    BatchState,
    StateError,
)

POLL_S = 0.5
_TERMINAL = {"succeeded": SUCCEEDED, "failed": FAILED, "canceled": CANCELED}


@dataclass
class Outcome:
    """What one run did: rows finished now, skipped as already finished, and left unfinished (with why)."""

    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    unfinished: int = 0


def video_of(request: GenerationRequest) -> dict[str, int]:
    """The video a validated request asks for (what the hosted price is computed from)."""
    return {"width": request.width, "height": request.height, "num_frames": request.num_frames, "fps": request.fps}


@dataclass
class Plan:
    """The rows a run works on (re-attachments first) and the finished rows it leaves alone."""

    rows: list[Row]
    done: int  # succeeded before, output present
    failed: int  # failed or canceled before, not retried


def plan_rows(manifest: Manifest, state: BatchState, retry_failed: bool) -> Plan:
    """Which rows still need work. Refuses a row whose input changed since it was submitted (unless it failed
    and is being retried): its old prediction answers for another job."""
    changed, attach, fresh = [], [], []
    done = failed = 0
    for row in manifest.rows:
        record = state.rows.get(row.id)
        status = record.status if record else PENDING
        retry = status in (FAILED, CANCELED) and retry_failed
        if record and status != PENDING and record.get("fingerprint") not in (None, row.fingerprint) and not retry:
            changed.append(row)
        elif status == SUCCEEDED and (state.out_dir / row.output).is_file():
            done += 1
        elif status in (FAILED, CANCELED) and not retry:
            failed += 1
        elif status in (SUBMITTED, SUCCEEDED):
            attach.append(row)
        else:
            fresh.append(row)
    if changed:
        names = ", ".join(f"{r.id} (line {r.line})" for r in changed)
        raise StateError(f"rows changed since they were submitted to this output folder: {names}; "
                         "give them new ids or use another --out")
    return Plan(attach + fresh, done, failed)


class ServerBatch:
    """Runs rows on a server with at most `concurrency` of them submitted and unfinished at once."""

    def __init__(self, client: ServerClient, model: str, state: BatchState, manifest: Manifest,
                 progress: BatchProgress, concurrency: int = 4, poll_s: float = POLL_S):
        self.client = client
        self.concurrency = max(1, concurrency)
        self.model = model
        self.state = state
        self.manifest = manifest
        self.progress = progress
        self.poll_s = poll_s
        self._uploads: dict[Path, str] = {}
        self._upload_lock = threading.Lock()
        self.errors: list[str] = []

    def run(self, rows: list[Row]) -> Outcome:
        outcome = Outcome()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="batch") as pool:
            results = list(pool.map(self.run_row, rows))
        for status in results:
            if status == SUCCEEDED:
                outcome.succeeded += 1
            elif status in (FAILED, CANCELED):
                outcome.failed += 1
            else:
                outcome.unfinished += 1
        return outcome

    def run_row(self, row: Row) -> str | None:
        """Take one row to its end; None when it has to be left for the next run (server unreachable)."""
        self.progress.started(row.id)
        try:
            status = self._run_row(row)
        except (httpx.HTTPError, ServerError, OSError) as exc:
            self.errors.append(f"{row.id}: {exc}")
            status = None
        except Exception:  # noqa: BLE001 - one row's bug must not stop the others; the trace says what it was
            self.errors.append(f"{row.id}: {traceback.format_exc()}")
            status = None
        if status is None:
            self.progress.left(row.id)
        else:
            self.progress.finished(row.id, status == SUCCEEDED)
        return status

    def _run_row(self, row: Row) -> str:
        record = self.state.row(row.id)
        prediction_id = record.get("prediction") if record.status in (SUBMITTED, SUCCEEDED) else None
        if prediction_id:
            try:
                return self._follow(row, self.client.get(prediction_id))
            except ServerError as exc:
                if exc.status != 404:
                    raise
                # The server no longer has it (a new database): submit again under the same key.
        return self._follow(row, self._submit(row))

    def _submit(self, row: Row) -> dict[str, Any]:
        record = self.state.row(row.id)
        if record.status == SUBMITTING or (record.status in (SUBMITTED, SUCCEEDED) and record.get("key")):
            attempt, key = record.attempt, record.get("key")  # same attempt: the server may already have it
        else:
            attempt = record.attempt + 1
            key = idempotency_key(self.state.batch_id, row.id, attempt)
        request = validated(row.input)
        payload = with_local_media(row.input, self._upload)
        self.state.record(row.id, SUBMITTING, attempt=attempt, key=key, line=row.line, output=row.output,
                          fingerprint=row.fingerprint, video=video_of(request), error=None)
        try:
            pred = self.client.create(self.model, payload, key)
        except ServerError as exc:
            if exc.status >= 500:
                raise
            self.state.record(row.id, FAILED, error=exc.message)
            return {"status": "failed", "error": exc.message, "id": None}
        self.state.record(row.id, SUBMITTED, prediction=pred["id"])
        return pred

    def _upload(self, ref: str) -> str:
        path = self.manifest.media_path(ref).resolve()
        with self._upload_lock:
            if path not in self._uploads:
                self._uploads[path] = self.client.upload(path)
            return self._uploads[path]

    def _follow(self, row: Row, pred: dict[str, Any]) -> str:
        """Poll a prediction to its end; download a success to the row's output file."""
        if pred.get("id") is None:
            return FAILED
        while pred["status"] not in _TERMINAL:
            step = step_of(pred.get("logs"))
            self.progress.step(row.id, f"step {step[0]}/{step[1]}" if step else pred["status"])
            time.sleep(self.poll_s)
            pred = self.client.get(pred["id"])
        status = _TERMINAL[pred["status"]]
        metrics = pred.get("metrics") or {}
        if status != SUCCEEDED:
            self.state.record(row.id, status, error=pred.get("error") or status, metrics=metrics)
            return status
        if not pred.get("output"):
            self.state.record(row.id, FAILED, metrics=metrics,
                              error="succeeded but its output is gone (the server's output retention removed it)")
            return FAILED
        self.progress.step(row.id, "downloading")
        size = self.client.download(pred["output"], self.state.out_dir / row.output)
        self.state.record(row.id, SUCCEEDED, metrics=metrics, output_size=size, error=None)
        return SUCCEEDED


class LocalBatch:
    """Renders rows one after another in this process on one loaded model (no server)."""

    def __init__(self, model: Any, state: BatchState, manifest: Manifest, progress: BatchProgress,
                 loras: LoraConfig | None = None):
        self.model = model
        self.state = state
        self.manifest = manifest
        self.progress = progress
        self.renderer = Renderer(model, work_dir=state.out_dir / ".work", fetch_policy=FetchPolicy(), loras=loras)
        self.errors: list[str] = []

    def run(self, rows: list[Row]) -> Outcome:
        outcome = Outcome()
        try:
            for row in rows:
                self.progress.started(row.id)
                status = self.run_row(row)
                self.progress.finished(row.id, status == SUCCEEDED)
                if status == SUCCEEDED:
                    outcome.succeeded += 1
                else:
                    outcome.failed += 1
        finally:
            shutil.rmtree(self.renderer.work_dir, ignore_errors=True)  # decoded inputs of the rows
        return outcome

    def run_row(self, row: Row) -> str:
        """One render. A row left running by a crash is simply rendered again (nothing else holds it)."""
        record = self.state.row(row.id)
        data = with_local_media(row.input, lambda ref: str(self.manifest.media_path(ref).resolve()))
        started = time.monotonic()
        try:
            request = validated(data)
            self.state.record(row.id, SUBMITTED, attempt=record.attempt + 1, line=row.line, output=row.output,
                              fingerprint=row.fingerprint, video=video_of(request), error=None)
            prepared = self.renderer.prepare(request)

            def on_progress(step: int, total: int) -> None:
                self.progress.step(row.id, f"step {step}/{total}")

            dest = self.state.out_dir / row.output
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(dest.stem + ".part.mp4")
            result = self.renderer.render(prepared, on_progress=on_progress, output_path=partial)
            partial.replace(dest)
        except RequestError as exc:
            self.state.record(row.id, FAILED, error=f"invalid input: {exc}",
                              metrics=local_metrics(time.monotonic() - started))
            return FAILED
        except Exception as exc:  # noqa: BLE001 - one bad job must not stop the batch
            self.errors.append(f"{row.id}: {traceback.format_exc()}")
            self.state.record(row.id, FAILED, error=f"{type(exc).__name__}: {exc}",
                              metrics=local_metrics(time.monotonic() - started))
            return FAILED
        metrics = {**local_metrics(time.monotonic() - started), "seed": result.seed,
                   "timings": {k: round(v, 3) for k, v in result.timings.items()}, **result.metrics}
        self.state.record(row.id, SUCCEEDED, metrics=metrics, output_size=dest.stat().st_size)
        return SUCCEEDED


def local_metrics(seconds: float) -> dict[str, Any]:
    """A local render holds one device for its whole run."""
    return {"predict_time": round(seconds, 3), "gpus": 1, "gpu_seconds": round(seconds, 3)}
