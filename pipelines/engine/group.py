"""A sequence-parallel render group: N rank processes denoise one job together, supervised by their parent.

The parent (a server worker, a benchmark, a test) owns a `RenderGroup`: it spawns one process per device,
each joins a torch.distributed group (NCCL on CUDA, gloo on CPU), loads the model and shards its
transformer(s) with pipelines.parallel. For each job the parent sends the prepared request to rank 0 and a
wake-up to the others (idle ranks wait on their pipe, never inside a collective, so no collective timeout
fires between jobs); rank 0 broadcasts the job, every rank runs the same Renderer.render on its shard.

Who does what (the text encoder and VAE are not duplicated needlessly):
- rank 0 alone encodes the prompt and broadcasts the embeddings; the other ranks never load the text
  encoder (UMT5-XXL is ~11 GB in bf16: memory each GPU keeps for activations, and load time saved);
- rank 0 alone VAE-encodes the conditioning video, mask and reference images and broadcasts the latents;
- rank 0 alone decodes and writes the mp4. The other ranks keep the (small, ~0.5 GB) VAE only for its
  config and dtype, which the pipeline reads.
The request's step-cache preset runs on every rank (Renderer.denoise_context): pipelines.step_cache keeps
its residuals per shard and agrees each skip decision across the group, so all ranks skip the same steps.
Cancellation is agreed each step by an all-reduce of rank 0's flag, so every rank stops after the same
step; rank 0 reports progress. A rank that dies (or fails while the others wait in a collective) fails
the job with GroupFailed and the group is restarted.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from vace.pipelines.engine.latent_preview import Preview
from vace.pipelines.engine.loading import load_pipeline
from vace.pipelines.engine.loras import LoraConfig
from vace.pipelines.engine.render import (
    CancelFn,
    Prepared,
    PreviewFn,
    ProgressFn,
    RenderCancelled,
    Renderer,
    RenderResult,
    prepare_request,
)
from vace.pipelines.job.request import GenerationRequest, RequestError
from vace.pipelines.media.fetch import FetchPolicy
from vace.pipelines.parallel.processes import exit_with_parent
from vace.pipelines.parallel.sequence import enable_sequence_parallel
from vace.weights.catalog import HelperDirs

STOP_GRACE_S = 5.0
ERROR_GRACE_S = 10.0  # how long the other ranks get to finish once one rank has reported an error
POLL_S = 0.2


class GroupFailed(RuntimeError):
    """A rank died or failed alone: the job is lost and the group is being restarted."""


class RankError(RuntimeError):
    """Every rank raised the same (non-request) error for this job; the group is intact."""


@dataclass(frozen=True)
class GroupSpec:
    """What a group runs: a weights directory sharded over `devices` (one rank per entry)."""

    model_dir: str
    devices: tuple[str, ...]
    sp_mode: str = "ulysses"
    name: str | None = None
    # "module:function" called as function(model_dir, device, text_encoder=rank == 0) -> LoadedModel in each
    # rank (e.g. a benchmark's random-weight builder); None = weights.loader.load_pipeline
    loader: str | None = None

    @property
    def size(self) -> int:
        return len(self.devices)

    @property
    def backend(self) -> str:
        return "nccl" if self.devices[0].startswith("cuda") else "gloo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------------
# Rank side
# ----------------------------------------------------------------------------------------------------


def broadcast_tensors(tensors: list[Any] | None, device: Any, src: int = 0) -> list[Any]:
    """Broadcast a list of tensors (entries may be None) from `src`; other ranks pass None."""
    import torch  # torch loads only where tensors are used (the API process never needs it)
    import torch.distributed as dist  # torch loads only where tensors are used (the API process never needs it)

    meta = [[None if t is None else (tuple(t.shape), t.dtype) for t in tensors] if tensors is not None else None]
    dist.broadcast_object_list(meta, src=src, device=device if device.type == "cuda" else None)
    out = []
    for i, entry in enumerate(meta[0]):
        if entry is None:
            out.append(None)
            continue
        shape, dtype = entry
        buffer = tensors[i].to(device).contiguous() if tensors is not None else torch.empty(
            shape, dtype=dtype, device=device)
        dist.broadcast(buffer, src=src)
        out.append(buffer)
    return out


def agreed_flag(flag: bool, device: Any) -> bool:
    """True on every rank when any rank passes True (one all-reduce)."""
    import torch  # torch loads only where tensors are used (the API process never needs it)
    import torch.distributed as dist  # torch loads only where tensors are used (the API process never needs it)

    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class _ShardDone(Exception):
    """Raised on ranks other than 0 where Renderer.render would decode: they are done after denoising."""


class ShardRenderer(Renderer):
    """Renderer for one rank of a group: same denoising on every rank, model-side extras on rank 0 only."""

    def __init__(self, model: Any, rank: int, device: Any, work_dir: str | Path | None = None):
        super().__init__(model, work_dir=work_dir)
        self.rank = rank
        self.device = device
        self._share_conditioning_encode()

    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float) -> tuple[Any, Any]:
        embeds = list(super().encode_prompt(prompt, negative_prompt, guidance)) if self.rank == 0 else None
        positive, negative = broadcast_tensors(embeds, self.device)
        return positive, negative

    def _share_conditioning_encode(self) -> None:
        """Rank 0 VAE-encodes the conditioning inside WanVACEPipeline.__call__; the others receive it."""
        pipe, rank, device = self.pipe, self.rank, self.device
        encode = pipe.prepare_video_latents

        def prepare_video_latents(video: Any, mask: Any, reference_images: Any = None, generator: Any = None,
                                  device_: Any = None) -> Any:
            latents = [encode(video, mask, reference_images, generator, device_)] if rank == 0 else None
            return broadcast_tensors(latents, device)[0]

        pipe.prepare_video_latents = prepare_video_latents

    def decode(self, latents: Any, num_reference_images: int) -> Any:
        if self.rank != 0:
            raise _ShardDone
        return super().decode(latents, num_reference_images)


def _error_message(exc: BaseException) -> tuple:
    if isinstance(exc, RequestError):
        return ("request_error", exc.field, str(exc).split(": ", 1)[-1])
    return ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())


def _rank_main(rank: int, spec: GroupSpec, port: int, conn: Any, cancel: Any, parent_pid: int,
               work_dir: str) -> None:
    """Entry point of one rank process."""
    exit_with_parent(parent_pid)
    try:
        import torch  # torch loads only where tensors are used (the API process never needs it)
        import torch.distributed as dist  # torch loads only where tensors are used (the API process never needs it)

        device = torch.device(spec.devices[rank])
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.size))
        dist.init_process_group(spec.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=spec.size)
        if spec.loader:
            module, function = spec.loader.split(":")
            model = getattr(importlib.import_module(module), function)(spec.model_dir, str(device),
                                                                       text_encoder=rank == 0)
        else:
            model = load_pipeline(spec.model_dir, device=str(device), name=spec.name, text_encoder=rank == 0)
        enable_sequence_parallel(model.transformers, spec.sp_mode)
        renderer = ShardRenderer(model, rank, device, work_dir=Path(work_dir) / f"rank{rank}")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then the rank exits
        conn.send(("fatal", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        raise
    conn.send(("ready", os.getpid(), sorted(k for k, v in model.pipeline.components.items() if v is not None)))

    def should_cancel() -> bool:
        return agreed_flag(rank == 0 and cancel.is_set(), device)

    def on_progress(step: int, total: int) -> None:
        conn.send(("progress", step, total))

    def on_preview(preview: Preview) -> None:
        conn.send(("preview", preview))

    while True:
        message = conn.recv()
        if message[0] == "stop":
            break
        job = [message[1], message[2]] if rank == 0 else [None, None]
        try:
            dist.broadcast_object_list(job, src=0, device=device if device.type == "cuda" else None)
            prepared, output_path = job
            result = renderer.render(prepared, on_progress=on_progress if rank == 0 else None,
                                     should_cancel=should_cancel, output_path=output_path,
                                     on_preview=on_preview if rank == 0 else None)
            result.metrics.update(sp_mode=spec.sp_mode, sp_group_size=spec.size)
            conn.send(("done", result))
        except _ShardDone:
            conn.send(("done", None))
        except RenderCancelled as exc:
            conn.send(("cancelled", str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides about the group
            conn.send(_error_message(exc))
    # No collective may still be in flight at teardown (gloo aborts the process otherwise); a dead peer makes
    # this fail or wait, and RenderGroup.stop() then terminates the rank.
    with contextlib.suppress(RuntimeError):
        dist.barrier()
    dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------------


class RenderGroup:
    """Spawns and supervises the ranks of one sequence-parallel group; renders one job at a time."""

    def __init__(self, spec: GroupSpec, work_dir: str | Path | None = None, start: bool = True):
        if spec.size < 2:
            raise ValueError("a render group needs at least 2 devices (use Renderer for one)")
        self.spec = spec
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="vace-group-"))
        self.ctx = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.conns: list[Any] = []
        self.cancel = self.ctx.Event()
        self.ready = False
        self.restarts = 0
        self.components: list[list[str]] = []  # per rank, the pipeline components it loaded
        self._lock = threading.Lock()
        if start:
            self.start()

    @property
    def two_experts(self) -> bool:
        """Whether the group's model has a low-noise expert (as LoadedModel.two_experts)."""
        return any("transformer_2" in loaded for loaded in self.components)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the ranks (returns at once; wait_ready() waits for the model to load on every rank)."""
        port = free_port()
        self.cancel.clear()
        self.ready = False
        self.processes, self.conns = [], []
        for rank in range(self.spec.size):
            parent_end, child_end = self.ctx.Pipe()
            process = self.ctx.Process(
                target=_rank_main, name=f"vace-rank{rank}",
                args=(rank, self.spec, port, child_end, self.cancel, os.getpid(), str(self.work_dir)))
            process.start()
            child_end.close()
            self.processes.append(process)
            self.conns.append(parent_end)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every rank has loaded and sharded the model; GroupFailed if one cannot."""
        if self.ready:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = set(range(self.spec.size))
        components: list[list[str]] = [[] for _ in waiting]
        while waiting:
            for rank in list(waiting):
                conn = self.conns[rank]
                if not conn.poll():
                    continue
                message = self._recv(rank, "while starting")
                if message[0] == "fatal":
                    self.stop()
                    raise GroupFailed(f"rank {rank} ({self.spec.devices[rank]}) could not start: {message[1]}\n"
                                      f"{message[2]}")
                components[rank] = list(message[2])
                waiting.discard(rank)
            if waiting:
                self._raise_if_dead("while starting")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the group did not load within {timeout:.0f} s")
            if waiting:
                wait([self.conns[r] for r in waiting] + [p.sentinel for p in self.processes], POLL_S)
        self.components = components
        self.ready = True

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        """Stop every rank (a graceful stop, then terminate, then kill)."""
        for conn in self.conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self.conns:
            conn.close()
        self.processes, self.conns, self.ready = [], [], False

    close = stop

    def __enter__(self) -> RenderGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self.processes]

    @property
    def alive(self) -> bool:
        return bool(self.processes) and all(p.is_alive() for p in self.processes)

    # -- jobs -------------------------------------------------------------------------------------

    def render(self, prepared: Prepared, on_progress: ProgressFn | None = None,
               should_cancel: CancelFn | None = None, output_path: str | Path | None = None,
               on_preview: PreviewFn | None = None) -> RenderResult:
        """Run one prepared job on the group (same contract as Renderer.render, plus GroupFailed)."""
        with self._lock:
            if not self.alive:
                self.restart()
            self.wait_ready()
            if should_cancel and should_cancel():
                raise RenderCancelled("cancelled before denoising")
            self.cancel.clear()
            for rank, conn in enumerate(self.conns):
                conn.send(("job", prepared, str(output_path) if output_path else None) if rank == 0 else ("job",))
            return self._collect(on_progress, should_cancel, on_preview)

    def _collect(self, on_progress: ProgressFn | None, should_cancel: CancelFn | None,
                 on_preview: PreviewFn | None = None) -> RenderResult:
        outcomes: dict[int, tuple] = {}
        first_error_at: float | None = None
        while len(outcomes) < self.spec.size:
            pending = [r for r in range(self.spec.size) if r not in outcomes]
            wait([self.conns[r] for r in pending] + [p.sentinel for p in self.processes], POLL_S)
            self._raise_if_dead("during the job", restart=True)
            for rank in pending:
                while rank not in outcomes and self.conns[rank].poll():
                    message = self._recv(rank, "during the job", restart=True)
                    if message[0] == "progress":
                        if on_progress:
                            on_progress(message[1], message[2])
                        if should_cancel and should_cancel():
                            self.cancel.set()
                    elif message[0] == "preview":
                        if on_preview:
                            on_preview(message[1])
                    else:
                        outcomes[rank] = message
            errors = {r: m for r, m in outcomes.items() if m[0] in ("error", "request_error")}
            if errors and first_error_at is None:
                first_error_at = time.monotonic()
            if first_error_at is not None and len(outcomes) < self.spec.size \
                    and time.monotonic() - first_error_at > ERROR_GRACE_S:
                rank, message = min(errors.items())
                self.restart()
                raise GroupFailed(f"rank {rank} failed alone ({message[1]}); the other ranks were left waiting, "
                                  f"so the group was restarted\n{message[-1]}")
        return self._outcome(outcomes)

    def _outcome(self, outcomes: dict[int, tuple]) -> RenderResult:
        kinds = {m[0] for m in outcomes.values()}
        if "request_error" in kinds or "error" in kinds:
            rank, message = min((r, m) for r, m in outcomes.items() if m[0] in ("error", "request_error"))
            if message[0] == "request_error":
                raise RequestError(message[1], message[2])
            if kinds != {"error"}:  # some ranks finished, one failed: their states have diverged
                self.restart()
                raise GroupFailed(f"rank {rank} failed ({message[1]}) while others finished; group restarted")
            raise RankError(f"{message[1]} (on every rank of the group)\n{message[2]}")
        if kinds == {"cancelled"}:
            raise RenderCancelled(outcomes[0][1])
        if kinds != {"done"} or outcomes[0][1] is None:
            self.restart()
            raise GroupFailed(f"the ranks disagreed about the job's outcome ({sorted(kinds)}); group restarted")
        return outcomes[0][1]

    def _recv(self, rank: int, when: str, restart: bool = False) -> tuple:
        try:
            return self.conns[rank].recv()
        except (EOFError, OSError):
            self._raise_if_dead(when, restart=restart, wait_s=STOP_GRACE_S)
            raise

    def _raise_if_dead(self, when: str, restart: bool = False, wait_s: float = 0.0) -> None:
        for rank, process in enumerate(self.processes):
            process.join(wait_s)
            if process.is_alive():
                continue
            message = (f"rank {rank} of the sequence-parallel group ({self.spec.devices[rank]}, pid "
                       f"{process.pid}) died with exit code {process.exitcode} {when}")
            if restart:
                self.restart()
                raise GroupFailed(message + "; the job failed and the group was restarted")
            self.stop()
            raise GroupFailed(message)


class GroupRenderer:
    """Drop-in for Renderer (prepare / render) that runs each job on a RenderGroup.

    prepare() runs here, in the caller's process (validation, input decoding, annotators on the group's first
    device, conditioning: no transformer work); render() ships the Prepared job to the group.
    """

    def __init__(self, group: RenderGroup, work_dir: str | Path | None = None,
                 fetch_policy: FetchPolicy | None = None, loras: LoraConfig | None = None,
                 helpers: HelperDirs | None = None, annotators_dir: Path | None = None):
        self.group = group
        self.work_dir = Path(work_dir or group.work_dir / "prepare")
        self.fetch_policy = fetch_policy
        self.loras = loras
        self.helpers = helpers
        self.annotators_dir = annotators_dir

    def prepare(self, request: GenerationRequest) -> Prepared:
        """As Renderer.prepare; the LoRAs resolve here to local files, which every rank then loads."""
        spec = self.group.spec
        return prepare_request(request, self.work_dir, self.fetch_policy, Path(spec.model_dir), spec.devices[0],
                               self.group.two_experts, self.loras, self.helpers, self.annotators_dir)

    def render(self, request: GenerationRequest | Prepared, on_progress: ProgressFn | None = None,
               should_cancel: CancelFn | None = None, output_path: str | Path | None = None,
               on_preview: PreviewFn | None = None) -> RenderResult:
        prepared = request if isinstance(request, Prepared) else self.prepare(request)
        if output_path is None:
            output_path = self.work_dir / f"render-{prepared.request.seed}-{time.time_ns()}.mp4"
        return self.group.render(prepared, on_progress, should_cancel, output_path, on_preview)


@contextlib.contextmanager
def render_group(model_dir: str | Path, devices: list[str], sp_mode: str = "ulysses",
                 name: str | None = None) -> Iterator[RenderGroup]:
    """A started, ready RenderGroup for the duration of a with-block."""
    group = RenderGroup(GroupSpec(str(model_dir), tuple(devices), sp_mode, name))
    try:
        group.wait_ready()
        yield group
    finally:
        group.stop()


__all__ = ["GroupFailed", "GroupRenderer", "GroupSpec", "RankError", "RenderGroup", "render_group"]
