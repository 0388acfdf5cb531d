"""`vace serve`: the prediction server (FastAPI under uvicorn) with its GPU worker."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import urllib.parse
from pathlib import Path

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
TINY_RENDER_SIDE = 256  # the random tiny models make noise: render it small, fast, at any requested size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the prediction server (Replicate-compatible API)")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                   help="tiny | tiny-a14b | a diffusers VACE directory; repeatable, the first is the default "
                        "(and the one prunaai/vace-14b runs on)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", default=os.environ.get("VACE_DATA_DIR", "vace-data"),
                   help="database, uploads and outputs (default: ./vace-data)")
    p.add_argument("--public-url", default=None,
                   help="base URL clients reach this server at (default: from --host/--port and TLS); "
                        "set it behind a TLS proxy so output URLs are https")
    p.add_argument("--ssl-certfile", default=None)
    p.add_argument("--ssl-keyfile", default=None)
    p.add_argument("--api-key", action="append", default=[],
                   help="accepted bearer token (repeatable; also VACE_API_KEYS, comma separated)")
    p.add_argument("--allow-insecure-no-auth", action="store_true",
                   help="allow serving a non-loopback address without any API key")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--gpus", default=None, metavar="0,1,2,3",
                   help="GPUs to use: one worker per GPU (or per --sequence-parallel group), all fed by one queue")
    p.add_argument("--sequence-parallel", type=int, default=1, metavar="N",
                   help="shard each job over a group of N GPUs (--gpus splits into groups of N); with "
                        "--device cpu, N processes share the CPU (gloo)")
    p.add_argument("--sp-mode", default="ulysses", choices=["ulysses", "ring"],
                   help="sequence-parallel attention: ulysses (all-to-all over heads) or ring (key/value ring)")
    p.add_argument("--offload", default="auto", choices=["none", "model", "group", "sequential", "auto"],
                   help="memory mode: CPU offload so the 14B fits 24/48 GB cards; auto picks from free GPU memory")
    p.add_argument("--attention", default="auto", choices=["auto", "sage", "_flash_3", "flash", "native"],
                   help="attention backend on CUDA (auto: the fastest installed; reported in /health)")
    p.add_argument("--no-compile", action="store_true",
                   help="do not torch.compile the repeated transformer blocks on CUDA")
    p.add_argument("--fp8", action="store_true", help="FP8 transformer weights (Ada/Hopper, needs torchao)")
    p.add_argument("--safety-checker", default=None, metavar="DIR|tiny",
                   help="local NSFW image classifier for enable_safety_checker (sets VACE_SAFETY_CHECKER)")
    p.add_argument("--safety-unavailable", default=None, choices=["refuse", "unchecked"],
                   help="with no classifier installed, refuse requests that ask for the check (default) or "
                        "serve them marked unchecked (sets VACE_SAFETY_UNAVAILABLE)")
    p.add_argument("--queue-max", type=int, default=100, help="queued predictions before answering 429")
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help="host on a loopback/private address that input URLs and webhooks may reach")
    p.add_argument("--no-worker", action="store_true",
                   help="accept and store predictions only; no GPU worker runs in this process")
    p.add_argument("--max-render-side", type=int, default=None, metavar="PIXELS",
                   help="render at most this many pixels on the longer side and resize the video to the "
                        f"requested size (CPU demos; default {TINY_RENDER_SIDE} when only tiny models are "
                        "served, else no cap; 0 = no cap)")
    p.add_argument("--webhook-attempts", type=int, default=6)
    p.add_argument("--output-retention-hours", type=float, default=24.0, metavar="H",
                   help="delete a finished prediction's output files H hours after it finished; it then reports "
                        "data_removed (default 24; 0 = keep forever; fractions allowed)")
    p.add_argument("--file-retention-hours", type=float, default=24.0, metavar="H",
                   help="uploaded files expire H hours after upload (expires_at) and are deleted "
                        "(default 24; 0 = keep forever; fractions allowed)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(handler=serve)


def parse_models(specs: list[str]) -> dict[str, str]:
    """`[NAME=]tiny|DIR` -> {served name: weights directory}; the weights are checked before serving."""
    from vace.pipelines.fixtures.tiny_model import TINY_MODELS, resolve_model
    from vace.weights.loader import check_layout

    models: dict[str, str] = {}
    for spec in specs or ["tiny"]:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        directory = resolve_model(path)
        check_layout(directory)
        name = name or (path if path in TINY_MODELS else Path(directory).name.lower())
        models[name] = str(directory)
    return models


def default_render_side(model_specs: list[str], requested: int | None) -> int | None:
    """--max-render-side as given (0 = no cap); unset: TINY_RENDER_SIDE when every served model is a tiny one."""
    from vace.pipelines.fixtures.tiny_model import TINY_MODELS

    if requested is not None:
        return requested or None
    paths = [spec.partition("=")[2] or spec for spec in (model_specs or ["tiny"])]
    if all(path in TINY_MODELS for path in paths):
        logging.getLogger("vace.server").info(
            "serving only tiny test models: renders are capped at %d px on the longer side and resized to "
            "the requested size (--max-render-side)", TINY_RENDER_SIDE)
        return TINY_RENDER_SIDE
    return None


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def own_netlocs(host: str, port: int, public_url: str) -> set[str]:
    names = {host, *LOOPBACK_NAMES}
    out = {f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in names}
    out.add(urllib.parse.urlparse(public_url).netloc)
    return out


def serve(args: argparse.Namespace) -> int:
    import uvicorn
    from vace.server.app import Settings, create_app
    from vace.server.retention import RetentionPolicy
    from vace.weights.loader import WeightsError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from vace.pipelines.outputs import safety

    # The API process and the spawned workers read these (pipelines.safety).
    if args.safety_checker:
        os.environ[safety.ENV_CHECKER] = args.safety_checker
    if args.safety_unavailable:
        os.environ[safety.ENV_POLICY] = args.safety_unavailable
    keys = list(args.api_key) + [k.strip() for k in os.environ.get("VACE_API_KEYS", "").split(",") if k.strip()]
    if not keys and not is_loopback(args.host) and not args.allow_insecure_no_auth:
        print(f"error: refusing to serve {args.host} without an API key; pass --api-key KEY "
              "(or --allow-insecure-no-auth to serve without authentication)", file=sys.stderr)
        return 2
    if args.port == 0 and not args.public_url:
        print("error: --port 0 picks a port this server cannot name in its output and file URLs; "
              "give a free port (or --public-url)", file=sys.stderr)
        return 2
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        print("error: --ssl-certfile and --ssl-keyfile go together", file=sys.stderr)
        return 2
    try:
        RetentionPolicy.from_hours(args.output_retention_hours, args.file_retention_hours)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        models = parse_models(args.model)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    max_render_side = default_render_side(args.model, args.max_render_side)
    scheme = "https" if args.ssl_certfile else "http"
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    shown = f"[{shown}]" if ":" in shown else shown
    public_url = (args.public_url or f"{scheme}://{shown}:{args.port}").rstrip("/")
    settings = Settings(
        models=models, data_dir=Path(args.data_dir).resolve(), public_url=public_url, api_keys=keys,
        device=args.device, queue_max=args.queue_max, allow_hosts=list(args.allow_host),
        own_netlocs=own_netlocs(args.host, args.port, public_url), run_worker=not args.no_worker,
        max_render_side=max_render_side, webhook_attempts=args.webhook_attempts, gpus=args.gpus,
        sequence_parallel=args.sequence_parallel, sp_mode=args.sp_mode, offload=args.offload,
        attention=args.attention, compile_blocks=not args.no_compile, fp8=args.fp8,
        output_retention_hours=args.output_retention_hours, file_retention_hours=args.file_retention_hours)
    try:
        from vace.server.worker.pool import worker_device_sets

        worker_device_sets(args.device, args.gpus, args.sequence_parallel)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    logging.getLogger("vace.server").info("serving %s at %s (data in %s)", ", ".join(models), public_url,
                                          settings.data_dir)
    uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.ssl_certfile,
                ssl_keyfile=args.ssl_keyfile, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def main() -> int:
    from vace.server.cli import main as cli_main

    return cli_main(["serve", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
