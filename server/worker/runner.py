"""The GPU worker: a process of its own that owns the model(s) and runs one claimed prediction at a time."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from vace.pipelines.engine.latent_preview import Preview
from vace.pipelines.engine.render import RenderCancelled
from vace.pipelines.engine.render_cap import capped_request, resize_result
from vace.pipelines.job.request import RequestError, with_media
from vace.pipelines.media.fetch import FetchError
from vace.pipelines.outputs.deliver import deliver
from vace.pipelines.outputs.retime import retime
from vace.pipelines.parallel.processes import exit_with_parent
from vace.server.metrics import INPUT_FETCH
from vace.server.storage import LocalStorage, Storage, output_key
from vace.server.store import CANCELED, FAILED, SUCCEEDED, Prediction, Store
from vace.server.store_listen import QUEUE_CHANNEL
from vace.server.worker.config import WorkerConfig
from vace.server.worker.job_log import JobLog
from vace.server.worker.liveness import Liveness, wait_beating
from vace.server.worker.pool import ModelPool, renderer_for
from vace.server.worker.store_writes import StoreWrites

log = logging.getLogger("vace.worker")

IDLE_POLL_S = 0.1  # a worker with neither announcements nor a supervisor's wake-up polls this often
# The fallback claim poll of an idle worker: new work wakes it at once (PostgreSQL's NOTIFY, or on SQLite the
# supervisor's wake-up on create), so this only catches what a wake-up could not carry (a lost connection).
CLAIM_FALLBACK_S = 5.0


def step_percent(step: int, total: int) -> float:
    """How far denoising is after `step` of `total`, in percent (the stored progress)."""
    return 100.0 * step / max(total, 1)


def progress_line(step: int, total: int) -> str:
    """A tqdm-style line (the replicate client parses `NN%|...| i/N`) that also says `step i/N`."""
    pct = int(step_percent(step, total))
    filled = pct // 10
    return f"{pct:3d}%|{'#' * filled}{' ' * (10 - filled)}| {step}/{total} denoising step {step}/{total}"


class JobRunner:
    """Runs one claimed prediction to its end and writes the outcome to the store.

    Kept separate from the claim loop so a multi-process group (sequence parallel) can drive it too.
    """

    def __init__(self, store: Store, pool: ModelPool, config: WorkerConfig, writes: StoreWrites | None = None,
                 storage: Storage | None = None):
        self.store = store
        self.writes = writes or StoreWrites(store)
        self.pool = pool
        self.config = config
        self.data_dir = Path(config.settings.data_dir)
        # Where the job's inputs are read from and its outputs go (default: the data dir, written in place).
        self.storage = storage or LocalStorage(self.data_dir)
        # Media references were checked when the prediction was created; local paths there are the
        # server's own uploads and outputs.
        self.fetch_policy = dataclasses.replace(config.settings.fetch_policy(), allow_local_paths=True)
        self.safety = config.settings.safety()

    def run(self, job: Prediction) -> str:
        owner = self.config.worker_id
        logs = JobLog(job.logs, job.log_times, job.updated_at)  # e.g. "requeued: ..."
        last_write = [0.0]

        def write_logs(force: bool = False, **values: Any) -> None:
            now = time.monotonic()
            if force or now - last_write[0] > 0.05:
                last_write[0] = now
                self.writes.report(job.id, owner, **logs.fields(), **values)

        started = time.time()
        model = None  # until loaded: a job that fails before has no model kind to report
        heartbeat = _Heartbeat(self.writes, job.id, owner, self.config.lease_s)
        heartbeat.start()
        try:
            stored = job.job
            work_dir = self.data_dir / "work" / job.id
            # The server's uploads and outputs used as inputs: read in place, or downloaded from the bucket.
            inputs = work_dir / "inputs"
            request = with_media(stored.request, lambda ref, field: self.storage.readable(ref, inputs, field))
            model = self.pool.get(job.model)
            self.writes.beat()  # between phases too: each phase must end within --worker-timeout
            renderer = renderer_for(model, work_dir, self.fetch_policy, self.config.settings.lora_config(),
                                    self.config.settings.helper_dirs(), self.config.settings.annotators_dir)
            if request.expand_prompt:
                logs.append("expanding prompt")
                write_logs(force=True)
            prepared = renderer.prepare(capped_request(request, self.config.settings.max_render_side))
            if request.expand_prompt:
                logs.append(f"expanded prompt: {prepared.request.prompt}")
            self.writes.beat()
            requested = dataclasses.replace(prepared.request, width=request.width, height=request.height)
            if prepared.request.width != request.width or prepared.request.height != request.height:
                logs.append(f"rendering at {prepared.request.width}x{prepared.request.height} "
                            f"(--max-render-side {self.config.settings.max_render_side}), "
                            f"resized to {request.width}x{request.height}")
            logs.append(f"model: {job.model}; seed: {requested.seed}")
            if prepared.loras:
                logs.append("loras: " + ", ".join(f"{a.file.label} x{a.scale:g}" + (
                    f" ({a.expert})" if a.expert != "both" else "") for a in prepared.loras))
            self._test_stop(0)
            write_logs(force=True, seed=requested.seed, progress=0.0)  # progress set: the job is denoising now

            step_seconds: list[float] = []
            last_step = [0.0]

            def on_progress(step: int, total: int) -> None:
                self.writes.beat()  # the heartbeat comes from the denoising loop: a hung step stops it
                self._test_stop(step)
                now = time.perf_counter()
                if step > 1:  # the first step's time also holds the pipeline's set-up (conditioning encode)
                    step_seconds.append(round(now - last_step[0], 4))
                last_step[0] = now
                logs.append(progress_line(step, total))
                write_logs(force=step == total, progress=step_percent(step, total))

            def on_preview(preview: Preview) -> None:
                # with its step's progress: the throttle may have skipped that step's own write
                self.writes.report(job.id, owner, preview=preview.to_dict(),
                                   progress=step_percent(preview.step, preview.total))

            out_dir = (self.storage.local_root or work_dir) / "outputs"  # a bucket's: uploaded once complete
            out_dir.mkdir(parents=True, exist_ok=True)
            out_path = out_dir / f"{job.id}.mp4"
            def on_log(line: str) -> None:
                logs.append(line)
                write_logs()

            def cancel_requested() -> bool:
                return self.store.cancel_requested(job.id)

            result = renderer.render(prepared, on_progress=on_progress, should_cancel=cancel_requested,
                                     output_path=out_path, on_preview=on_preview)
            result = retime(result, prepared, on_log=on_log, should_cancel=cancel_requested)
            result = resize_result(result, requested.width, requested.height)
            output = {
                "path": output_key(out_path.name), "content_type": "video/mp4", "file_name": out_path.name,
                "width": result.width, "height": result.height,
                "fps": result.fps, "num_frames": result.num_frames,
                "duration": result.num_frames / result.fps if result.fps else None, "seed": result.seed,
                "prompt": prepared.request.prompt,
            }
            self.writes.beat()
            output.update(self._deliver(job, result, out_dir, logs))
            output["file_size"] = out_path.stat().st_size  # after delivery, which may re-encode
            self.writes.beat()
            for path in sorted(out_dir.glob(f"{job.id}*")):  # stored before the outcome names them
                self.storage.put_file(output_key(path.name), path)
            metrics = {"seed": result.seed, "step_seconds": step_seconds,
                       "timings": {k: round(v, 3) for k, v in result.timings.items()},
                       **result.metrics, **self.held(started, model)}
            logs.append(f"done in {metrics['predict_time']:.2f}s")
            self.writes.finish(job.id, owner, SUCCEEDED, output=output, metrics=metrics, progress=100.0,
                              **logs.fields())
            return SUCCEEDED
        except RenderCancelled as exc:
            logs.append(str(exc))
            self.writes.finish(job.id, owner, CANCELED, **logs.fields(), metrics=self.held(started, model))
            return CANCELED
        except FetchError as exc:
            return self._fail(job, owner, logs, {**self.held(started, model), "error_kind": INPUT_FETCH},
                              f"invalid input: {exc}")
        except RequestError as exc:
            return self._fail(job, owner, logs, self.held(started, model), f"invalid input: {exc}")
        except Exception as exc:  # noqa: BLE001 - a job failure must never take the worker down
            log.error("prediction %s failed:\n%s", job.id, traceback.format_exc())
            return self._fail(job, owner, logs, self.held(started, model), f"{type(exc).__name__}: {exc}")
        finally:
            heartbeat.stop()

            shutil.rmtree(self.data_dir / "work" / job.id, ignore_errors=True)

    def _test_stop(self, step: int) -> None:
        """The fault-test hook (--test-stop-at-step): the worker stops itself (SIGSTOP) at that denoising step, or
        with 0 just before denoising starts."""
        if step == self.config.test_stop_at_step:
            os.kill(os.getpid(), signal.SIGSTOP)

    def _deliver(self, job: Prediction, result: Any, out_dir: Path, logs: JobLog) -> dict[str, Any]:
        """The job's delivery options: encoder settings, frames zip, safety check."""
        extra = deliver(result.frames, result.path, result.fps, job.job.delivery, out_dir, job.id,
                        self.safety)
        safety = extra.get("safety")
        if safety:
            logs.append("safety checker: " + ("NSFW content detected" if safety["nsfw"] else "no NSFW content")
                        if safety["checked"] else f"safety checker: NOT CHECKED ({safety['note']})")
        return extra

    def _fail(self, job: Prediction, owner: str, logs: JobLog, metrics: dict[str, Any], message: str) -> str:
        logs.append(message)
        self.writes.finish(job.id, owner, FAILED, error=message, **logs.fields(), metrics=metrics)
        return FAILED

    def held(self, started: float, model: Any) -> dict[str, Any]:
        """What the job cost in device time, whatever its outcome: the seconds this worker held its device(s)
        for it (claim to finish), times the devices in its group (`gpus`), and the model's kind (`experts`)."""
        seconds = time.time() - started
        gpus = max(1, len(self.config.devices))
        metrics: dict[str, Any] = {"predict_time": round(seconds, 3), "gpus": gpus,
                                   "gpu_seconds": round(seconds * gpus, 3)}
        if model is not None:
            metrics["experts"] = 2 if model.two_experts else 1
        return metrics


class _Heartbeat(threading.Thread):
    """Renews the lease of the running job so other servers can tell a live worker from a dead one."""

    def __init__(self, writes: StoreWrites, prediction_id: str, owner: str, lease_s: float):
        super().__init__(daemon=True, name="heartbeat")
        self.args_ = (writes, prediction_id, owner, lease_s)
        self.stopped = threading.Event()

    def run(self) -> None:
        writes, pid, owner, lease_s = self.args_
        while not self.stopped.wait(lease_s / 3):
            writes.heartbeat(pid, owner, lease_s)

    def stop(self) -> None:
        self.stopped.set()


def worker_main(config: WorkerConfig, events: Any = None, stop: Any = None, liveness: Liveness | None = None) -> None:
    """Process entry point: load the default model, then claim and run jobs until `stop` is set (a job already
    running is finished first: that is the graceful drain)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    exit_with_parent()
    # A service manager signals the whole process group on stop; the server drains this worker through `stop`.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    store = Store(config.database_url)
    writes = StoreWrites(store, liveness, events)
    pool = ModelPool(config, Path(config.settings.data_dir) / "work" / f"group-{config.worker_id}")
    default = next(iter(config.models))
    try:
        storage = config.settings.storage_backend()
        model = pool.get(default)
    except Exception as exc:  # noqa: BLE001 - reported to the server as SETUP_FAILED
        log.error("could not set up (storage, model %s): %s", default, exc)
        if events is not None:
            events.put(("setup_failed", f"{type(exc).__name__}: {exc}"))
        return
    writes.beat()
    if events is not None:
        events.put(("ready", {"model": default, "levers": getattr(model, "levers", None),
                              "offload": getattr(model, "offload", None), "device": str(getattr(model, "device", ""))}))
    runner = JobRunner(store, pool, config, writes, storage)
    queued = store.listener(QUEUE_CHANNEL, poll_s=IDLE_POLL_S)  # PostgreSQL wakes it at once; SQLite is polled
    while stop is None or not stop.is_set():
        writes.beat()
        job = writes.claim(config.worker_id, config.lease_s, models=list(config.models))
        if job is None:
            if queued.pushes:  # the database announces claimable work
                wait_beating(queued.wait, liveness.beat if liveness is not None else None, CLAIM_FALLBACK_S, stop)
            elif liveness is not None:  # the supervisor wakes it when a prediction is created here
                liveness.wait_for_work(CLAIM_FALLBACK_S, stop)
            else:
                queued.wait(IDLE_POLL_S)
            continue
        log.info("running %s on %s", job.id, job.model)
        status = runner.run(job)
        log.info("%s %s", job.id, status)
