"""The `vace batch run|check|report` subcommands."""

from __future__ import annotations

import argparse
import contextlib
import functools
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from vace.pipelines.cli.generate import DistillFlagError, add_lora_library_flags, lora_config_from_args
from vace.pipelines.conditioning.annotators import AnnotatorEnv
from vace.pipelines.conditioning.tasks import preflight
from vace.pipelines.engine.loading import load_pipeline
from vace.pipelines.fixtures.tiny_model import resolve_model
from vace.server.batch.execute import LocalBatch, Outcome, ServerBatch, plan_rows
from vace.server.batch.manifest import (
    Manifest,
    ManifestError,
    Problem,
    check_rows,
    read_manifest,
    server_lora_check,
)
from vace.server.batch.prices import DEFAULT_GPU_HOUR_PRICE, HOSTED_PRICES
from vace.server.batch.progress import BatchProgress
from vace.server.batch.remote import ServerClient, ServerError
from vace.server.batch.report import AUTO, build_report, summary, write_report
from vace.server.batch.state import STATE_FILE, BatchState, StateError
from vace.server.service.loras import check_loras
from vace.server.service.served import ModelUnreadable
from vace.weights.loader import WeightsError

EXIT_OK, EXIT_ROWS_FAILED, EXIT_REFUSED = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    batch = sub.add_parser("batch", help="render a manifest of jobs (with resume) and report what they cost")
    commands = batch.add_subparsers(dest="batch_command", required=True)

    run = commands.add_parser("run", help="render every row of a manifest into --out (resumable)")
    run.add_argument("manifest", type=Path, help="JSONL or CSV, one job per row")
    run.add_argument("--out", type=Path, required=True, help="output folder (videos + batch-state.jsonl)")
    _add_target(run)
    run.add_argument("--concurrency", type=int, default=4,
                     help="at most this many rows submitted and unfinished on the server at once (default 4)")
    run.add_argument("--retry-failed", action="store_true", help="submit rows that failed before again")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(handler=_run)

    check = commands.add_parser("check", help="validate every row and list all bad rows; queues nothing")
    check.add_argument("manifest", type=Path)
    _add_target(check)
    check.set_defaults(handler=_check)

    report = commands.add_parser("report", help="GPU time and cost per job and in total, against the hosted price")
    report.add_argument("out", type=Path, help="a batch's output folder")
    report.add_argument("--gpu-hour-price", type=float, default=DEFAULT_GPU_HOUR_PRICE,
                        help=f"USD per GPU-hour (default {DEFAULT_GPU_HOUR_PRICE:.2f}: mid-range on-demand H100 "
                             "SXM list price, 2026)")
    report.add_argument("--hosted", default=AUTO, choices=(AUTO, *HOSTED_PRICES),
                        help="hosted price table (auto: wan-22-vace-fun-a14b for two-expert models, else "
                             "wan-vace-14b)")
    report.set_defaults(handler=_report)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="base URL of a running `vace serve`")
    parser.add_argument("--api-key", help="the server's API key")
    parser.add_argument("--ca-file", help="CA bundle that signed the server's TLS certificate")
    parser.add_argument("--local", action="store_true", help="render in this process, without a server")
    parser.add_argument("--model", help="server: served model name (default: the server's first); "
                                        "--local: tiny | tiny-a14b | weights directory (default tiny)")
    parser.add_argument("--device", default="auto", help="--local: auto | cpu | cuda | cuda:N")
    parser.add_argument("--offload", default="auto", help="--local: none | model | group | sequential | auto")
    add_lora_library_flags(parser, prefix="--local: ")


class Refused(Exception):
    """The command cannot start (bad flags, unreadable manifest, server refusal); nothing was queued."""


def refusals(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print why a command was refused, as one line, and exit with EXIT_REFUSED."""
    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (Refused, ManifestError, StateError, ServerError, WeightsError, DistillFlagError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except ModelUnreadable as exc:  # --local: the model is this machine's, so say which file and why
            print(f"error: {exc.reason}", file=sys.stderr)
            return EXIT_REFUSED
        except httpx.HTTPError as exc:
            print(f"error: cannot reach the server at {getattr(args, 'server', None)}: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    return wrapped


@contextlib.contextmanager
def connected(args: argparse.Namespace, target_required: bool) -> Iterator[ServerClient | None]:
    """A client for --server (None for --local or no target), closed afterwards."""
    if args.local and args.server:
        raise Refused("give --server URL or --local, not both")
    if target_required and not (args.local or args.server):
        raise Refused("give --server URL or --local")
    verify: Any = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else True
    client = ServerClient(args.server, args.api_key, verify=verify) if args.server else None
    try:
        yield client
    finally:
        if client is not None:
            client.close()


def _served_model(client: ServerClient, args: argparse.Namespace) -> str:
    return args.model or client.health()["models"][0]


def checked_manifest(args: argparse.Namespace, client: ServerClient | None) -> tuple[Manifest, list[Problem]]:
    """The manifest and every bad row: against the server's published schema, or (--local) with the local
    model's annotators, or (neither) against this package's own schema."""
    manifest = read_manifest(args.manifest)
    if client is not None:
        model = _served_model(client, args)
        return manifest, check_rows(manifest, schema=client.input_schema(model),
                                    lora_check=server_lora_check(client.loras(), model))
    if args.local:
        name = args.model or "tiny"
        path = str(resolve_model(name))
        env = AnnotatorEnv.for_model(path)
        loras = lora_config_from_args(args, name)
        return manifest, check_rows(manifest, task_check=lambda request: preflight(request, env),
                                    lora_check=lambda request: check_loras(request, name, path, loras, None,
                                                                           allow_paths=True))
    return manifest, check_rows(manifest)


def _print_problems(problems: list[Problem], total: int) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)
    bad = len({p.line for p in problems})
    print(f"{bad} of {total} rows are invalid", file=sys.stderr)


@refusals
def _check(args: argparse.Namespace) -> int:
    with connected(args, target_required=False) as client:
        manifest, problems = checked_manifest(args, client)
    if problems:
        _print_problems(problems, len(manifest.rows))
        return EXIT_ROWS_FAILED
    print(f"{len(manifest.rows)} rows are valid")
    return EXIT_OK


@refusals
def _run(args: argparse.Namespace) -> int:
    with connected(args, target_required=True) as client:
        manifest, problems = checked_manifest(args, client)
        if problems:
            _print_problems(problems, len(manifest.rows))
            print("nothing was queued", file=sys.stderr)
            return EXIT_REFUSED
        if client is None:
            return _run_local(args, manifest)
        model = _served_model(client, args)
        state = BatchState.open(args.out, mode="server", server=args.server, model=model,
                                manifest=str(args.manifest.resolve()))
        return _execute(args, manifest, state, lambda progress: ServerBatch(
            client, model, state, manifest, progress, concurrency=args.concurrency))


def _run_local(args: argparse.Namespace, manifest: Manifest) -> int:
    path = resolve_model(args.model or "tiny")
    model = load_pipeline(path, device=args.device, offload=args.offload)
    state = BatchState.open(args.out, mode="local", model=str(path), two_experts=model.two_experts,
                            manifest=str(args.manifest.resolve()))
    loras = lora_config_from_args(args, args.model or "tiny")
    return _execute(args, manifest, state, lambda progress: LocalBatch(model, state, manifest, progress, loras))


def _execute(args: argparse.Namespace, manifest: Manifest, state: BatchState, make: Any) -> int:
    """Plan, run with one progress bar (`make(progress)` builds the ServerBatch or LocalBatch), say what happened."""
    plan = plan_rows(manifest, state, args.retry_failed)
    progress = BatchProgress(len(manifest.rows), plan.done, plan.failed, enabled=not args.no_progress)
    try:
        batch = make(progress)
        outcome: Outcome = batch.run(plan.rows)
    finally:
        progress.close()
    for error in batch.errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"{outcome.succeeded} rendered, {outcome.failed} failed, {plan.done + plan.failed} skipped "
          f"(finished before), {outcome.unfinished} left for the next run; outputs in {state.out_dir}")
    failed = [r for r in manifest.rows if state.rows.get(r.id) and state.rows[r.id].status in ("failed", "canceled")]
    for row in failed:
        print(f"failed: {row.id} (line {row.line}): {state.rows[row.id].get('error')}", file=sys.stderr)
    if failed and not args.retry_failed:
        print("run again with --retry-failed to submit the failed rows again", file=sys.stderr)
    return EXIT_OK if outcome.unfinished == 0 and not failed else EXIT_ROWS_FAILED


@refusals
def _report(args: argparse.Namespace) -> int:
    state = BatchState.load(args.out)
    if state is None:
        raise Refused(f"{args.out} holds no batch (no {STATE_FILE})")
    jobs, totals = build_report(state, args.gpu_hour_price, args.hosted)
    csv_path, json_path = write_report(state.out_dir, jobs, totals)
    print(summary(totals, jobs))
    print(f"per job: {csv_path} and {json_path}")
    return EXIT_OK
