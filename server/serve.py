"""`vace serve`: the prediction server (FastAPI under uvicorn) with its GPU workers.

Every option is declared once in server/settings.py. Stopping: SIGTERM or SIGINT ends the server.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

import uvicorn

from vace.pipelines.acceleration.presets import DISTILL_PAIR_NEEDED
from vace.pipelines.engine.render_cap import default_render_side
from vace.pipelines.fixtures.tiny_loras import TINY_DISTILL, resolve_tiny_loras
from vace.pipelines.fixtures.tiny_model import TINY_MODELS, only_tiny, resolve_model
from vace.pipelines.job.request import RequestError
from vace.server.app import create_app
from vace.server.draining import DrainingServer
from vace.server.retention import RetentionPolicy
from vace.server.service.loras import check_distill_fits
from vace.server.service.served import ModelUnreadable
from vace.server.settings import LOOPBACK_NAMES, ServeSettings, add_flags, from_flags
from vace.server.storage import StorageError
from vace.server.worker.devices import worker_device_sets
from vace.weights.loader import WeightsError, check_layout


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the prediction server (Replicate-, fal- and WaveSpeed-compatible APIs)")
    add_flags(p)
    p.set_defaults(handler=serve)


def resolve_models(specs: list[str]) -> list[str]:
    """`[NAME=]tiny|DIR` -> `NAME=DIR` with the weights checked before serving; no spec serves `tiny`."""
    models: dict[str, str] = {}
    for spec in specs or ["tiny"]:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        directory = resolve_model(path)
        check_layout(directory)
        name = name or (path if path in TINY_MODELS else Path(directory).name.lower())
        models[name] = str(directory)
    return [f"{name}={path}" for name, path in models.items()]


def serves_only_tiny(model_specs: list[str]) -> bool:
    """Whether every `[NAME=]tiny|DIR` spec (none = tiny) names a built-in tiny model."""
    return only_tiny(model_specs)


def tiny_render_side(model_specs: list[str], requested: int | None) -> int:
    """--max-render-side as given (0 = no cap); unset: the demo cap when every served model is a tiny one."""
    side = default_render_side(only_tiny(model_specs), requested)
    if requested is None and side:
        logging.getLogger("vace.server").info(
            "serving only tiny test models: renders are capped at %d px on the longer side and resized to "
            "the requested size (--max-render-side)", side)
    return side


def tiny_safety_checker(model_specs: list[str], requested: str | None) -> str | None:
    """--safety-checker as given (`none` = no classifier); unset: the tiny checker when only tiny models are
    served, so every documented request (WaveSpeed's default is to check) runs on a demo server. It is calibrated
    to call the tiny models' noise safe and knows nothing of real content; the job's output says which ran."""
    if requested is not None or not only_tiny(model_specs):
        return requested
    logging.getLogger("vace.server").info("serving only tiny test models: the safety checker is the tiny one")
    return "tiny"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve(settings: ServeSettings) -> ServeSettings:
    """Check the settings as a whole and fill in what follows from them (models, public URL, render cap).
    Raises ValueError (or WeightsError) with a one-line message."""
    if not settings.api_keys and not is_loopback(settings.host) and not settings.allow_insecure_no_auth:
        raise ValueError(f"refusing to serve {settings.host} without an API key; pass --api-key KEY "
                         "(or --allow-insecure-no-auth to serve without authentication)")
    if settings.port == 0 and not settings.public_url:
        raise ValueError("--port 0 picks a port this server cannot name in its output and file URLs; "
                         "give a free port (or --public-url)")
    if bool(settings.ssl_certfile) != bool(settings.ssl_keyfile):
        raise ValueError("--ssl-certfile and --ssl-keyfile go together")
    if settings.distill_lora_low_noise and not settings.distill_lora:
        raise ValueError(DISTILL_PAIR_NEEDED)
    if settings.storage_options and not settings.storage:
        raise ValueError("--storage-options configures the object store of --storage s3://BUCKET/PREFIX; "
                         "give --storage too (files are in --data-dir without it)")
    RetentionPolicy.from_hours(settings.output_retention_hours, settings.file_retention_hours)
    worker_device_sets(settings.device, settings.gpus, settings.sequence_parallel)
    scheme = "https" if settings.ssl_certfile else "http"
    shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    shown = f"[{shown}]" if ":" in shown else shown
    tiny_only = serves_only_tiny(settings.model)
    resolved = settings.model_copy(update={
        "model": resolve_models(settings.model),
        # only tiny models: their tiny LoRAs and tiny distill, so the demo server runs every feature
        "lora_dir": settings.lora_dir or (resolve_tiny_loras() if tiny_only else None),
        "distill_lora": settings.distill_lora or (TINY_DISTILL if tiny_only else None),
        "max_render_side": tiny_render_side(settings.model, settings.max_render_side),
        "safety_checker": tiny_safety_checker(settings.model, settings.safety_checker),
        "public_url": (settings.public_url or f"{scheme}://{shown}:{settings.port}").rstrip("/"),
        "data_dir": settings.data_dir.resolve(),
    })
    check_turbo_for(resolved)
    return resolved


def check_turbo_for(settings: ServeSettings) -> None:
    """--turbo-for runs the distill recipe: refuse to start without a --distill-lora, or with one that does not
    fit a served model (read from the files' headers, as a submit would)."""
    if not settings.turbo_for:
        return
    config = settings.lora_config()
    if config.distill is None:
        raise ValueError(f"--turbo-for {settings.turbo_for[0]!r} runs preset turbo, which needs a step-distillation "
                         "LoRA: give --distill-lora PATH_OR_NAME")
    for name, model_dir in settings.served_models().items():
        try:
            check_distill_fits(config, name, model_dir)
        except RequestError as exc:
            raise ValueError(f"--turbo-for needs a --distill-lora that fits every served model: {exc.message}") \
                from None
        except ModelUnreadable as exc:
            raise ValueError(f"--turbo-for: model {name}: {exc.reason}") from None


def serve(args: argparse.Namespace) -> int:
    try:
        given = from_flags(args)
        # before resolve(), which says what it chose for a demo server
        logging.basicConfig(level=given.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        settings = resolve(given)
        settings.storage_backend().check()  # a wrong bucket, endpoint or credential fails here, not at the first job
    except (ValueError, WeightsError, StorageError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    app = create_app(settings)
    logging.getLogger("vace.server").info("serving %s at %s (data in %s%s)", ", ".join(settings.served_models()),
                                          settings.public_url, settings.data_dir,
                                          f", uploads and outputs in {settings.storage}" if settings.storage else "")
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
                            ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
                            log_level=settings.log_level, timeout_graceful_shutdown=5)
    DrainingServer(config, app.state.supervisor.begin_stop).run()
    return 0
