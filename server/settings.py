"""Every `vace serve` option, declared once: its flag, its VACE_* environment variable, default, range and help.

`add_flags()` builds the argparse flags from these fields and `from_flags()` reads them back; a flag given on
the command line wins over the environment variable, which wins over the default. The object is plain data:
the API process passes it to every worker process as it is (never through os.environ).
"""

from __future__ import annotations

import argparse
import json
import typing
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vace.pipelines.acceleration.presets import DistillRecipe, TurboMap, parse_turbo_for
from vace.pipelines.engine.loras import ADAPTER_CAPACITY, LoraConfig
from vace.pipelines.fixtures.tiny_model import resolve_safety_checker
from vace.pipelines.media.fetch import FetchPolicy
from vace.pipelines.outputs.safety import SafetyConfig
from vace.server.auth import check_keys
from vace.server.storage import LocalStorage, ObjectStorage, Storage
from vace.weights.catalog import HelperDirs

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _flag(flag: str | None = None, metavar: str | None = None, negate: str | None = None) -> dict[str, Any]:
    """argparse details a field's json_schema_extra carries: a flag name other than the field's, a metavar, or
    a `--no-...` flag for a True-by-default switch."""
    return {k: v for k, v in {"flag": flag, "metavar": metavar, "negate": negate}.items() if v}


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VACE_", extra="forbid", validate_default=True)

    model: list[str] = Field(default_factory=list, description=(
        "tiny | tiny-a14b | a diffusers VACE directory; repeatable, the first is the default (and the one "
        "prunaai/vace-14b runs on)"), json_schema_extra=_flag(metavar="[NAME=]PATH"))
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind")
    data_dir: Path = Field(Path("vace-data"), description="database, uploads and outputs")
    database_url: str | None = Field(None, description=(
        "SQLAlchemy URL of the store (default: SQLite in the data dir)"))
    storage: str | None = Field(None, description=(
        "keep uploads and outputs in this S3 bucket (the [s3] extra) instead of the data dir, so several API "
        "replicas on one --database-url serve the same files; credentials as for any AWS client (AWS_* "
        "variables, ~/.aws, an instance role) or in --storage-options"),
        json_schema_extra=_flag(metavar="s3://BUCKET/PREFIX"))
    storage_options: Annotated[dict[str, Any] | None, NoDecode] = Field(None, description=(
        "JSON object of s3fs options for --storage, e.g. {\"endpoint_url\": \"http://minio:9000\"} for an "
        "S3-compatible server (key, secret, client_kwargs, ...)"), json_schema_extra=_flag(metavar="JSON"))
    public_url: str | None = Field(None, description=(
        "base URL clients reach this server at (default: from --host/--port and TLS); set it behind a TLS "
        "proxy so output URLs are https"))
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM); goes with --ssl-keyfile")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM); goes with --ssl-certfile")
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description=(
        "accepted bearer token, one per tenant: a key sees, lists and cancels only its own predictions and "
        "files (repeatable; VACE_API_KEYS takes a comma-separated list)"),
        json_schema_extra=_flag(flag="api-key", metavar="KEY"))
    allow_insecure_no_auth: bool = Field(False, description=(
        "allow serving a non-loopback address without any API key"))
    executor: Literal["local", "ray"] = Field("local", description=(
        "where the GPU workers run: local (supervised processes on this machine) or ray (actors across a Ray "
        "cluster, the [ray] extra; see README \"Many machines\")"))
    ray_address: str = Field("auto", description=(
        "the Ray cluster --executor ray joins: auto (the one `ray start` runs on this machine) or HOST:PORT of "
        "its head"), json_schema_extra=_flag(metavar="ADDR"))
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    gpus: str | None = Field(None, description=(
        "GPUs to use: one worker per GPU (or per --sequence-parallel group), all fed by one queue"),
        json_schema_extra=_flag(metavar="0,1,2,3"))
    sequence_parallel: int = Field(1, ge=1, le=64, description=(
        "shard each job over a group of N GPUs (--gpus splits into groups of N); with --device cpu, N processes "
        "share the CPU (gloo)"), json_schema_extra=_flag(metavar="N"))
    sp_mode: Literal["ulysses", "ring"] = Field("ulysses", description=(
        "sequence-parallel attention: ulysses (all-to-all over heads) or ring (key/value ring)"))
    offload: Literal["none", "model", "group", "sequential", "auto"] = Field("auto", description=(
        "memory mode: CPU offload so the 14B fits 24/48 GB cards; auto picks from free GPU memory"))
    attention: Literal["auto", "sage", "_flash_3", "flash", "native"] = Field("auto", description=(
        "attention backend on CUDA (auto: the fastest installed; reported in /health)"))
    compile: bool = Field(True, description="torch.compile the repeated transformer blocks on CUDA",
                          json_schema_extra=_flag(negate="no-compile"))
    fp8: bool = Field(False, description="FP8 transformer weights (Ada/Hopper, needs torchao)")
    safety_checker: str | None = Field(None, description=(
        "local NSFW image classifier for enable_safety_checker: a directory, `tiny`, or `none` (default: `tiny` "
        "when only tiny models are served, else none)"),
        json_schema_extra=_flag(metavar="DIR|tiny|none"))
    safety_unavailable: Literal["refuse", "unchecked"] = Field("refuse", description=(
        "with no classifier installed, refuse requests that ask for the check, or serve them marked unchecked"))
    annotators_dir: Path | None = Field(None, description=(
        "annotator weights root (default: `annotators/` beside the first served model)"))
    lora_dir: Path | None = Field(None, description=(
        "LoRA library folder: requests name its *.safetensors files (by stem); GET /v1/loras lists them "
        "(default with only tiny models served: the tiny LoRAs)"), json_schema_extra=_flag(metavar="DIR"))
    lora_cache: int = Field(ADAPTER_CAPACITY, ge=1, le=64, description=(
        "LoRA adapters kept loaded on the model; the least recently used one beyond this is unloaded"),
        json_schema_extra=_flag(metavar="N"))
    distill_lora: str | None = Field(None, description=(
        "step-distillation LoRA preset turbo runs: a name in --lora-dir or a path, [:SCALE] (default with only "
        "tiny models served: tiny-distill)"), json_schema_extra=_flag(metavar="PATH_OR_NAME[:SCALE]"))
    distill_lora_low_noise: str | None = Field(None, description=(
        "two-expert models (Wan2.2 A14B): the distill LoRA of the low-noise expert, as published distill pairs "
        "come; --distill-lora then goes on the high-noise expert only (without this flag it goes on both)"),
        json_schema_extra=_flag(metavar="PATH_OR_NAME[:SCALE]"))
    distill_steps: int = Field(DistillRecipe.steps, ge=1, le=100, description="steps of the distill recipe")
    distill_shift: float = Field(DistillRecipe.shift, ge=0, le=30, description="flow shift of the distill recipe")
    distill_sampler: Literal["unipc", "dpm++", "euler"] = Field(DistillRecipe.sampler, description=(
        "sampler of the distill recipe"))
    turbo_for: list[str] = Field(default_factory=list, description=(
        "run preset turbo (the --distill-lora recipe) where a hosted request asks for this speed instead of the "
        "level it names: replicate:SPEED_MODE (prunaai speed_mode) or fal:ACCELERATION (none|low|regular); "
        "repeatable, e.g. --turbo-for 'replicate:Extra Juiced 🚀 (even more speed)' --turbo-for fal:regular; "
        "needs --distill-lora (default: none mapped)"), json_schema_extra=_flag(metavar="DIALECT:VALUE"))
    interpolators: Path | None = Field(None, description=(
        "frame interpolator weights root holding rife/flownet.pkl and film/film_net_fp32.pt (default: "
        "`interpolators/` beside each served model)"), json_schema_extra=_flag(metavar="DIR"))
    prompt_extender: Path | None = Field(None, description=(
        "Qwen2.5-Instruct folder that rewrites prompts for enable_prompt_expansion (default: `prompt-extender/` "
        "beside each served model)"), json_schema_extra=_flag(metavar="DIR"))
    prompt_extender_vl: Path | None = Field(None, description=(
        "Qwen2.5-VL-Instruct folder that rewrites prompts of requests with images (default: "
        "`prompt-extender-vl/` beside each served model; without one the text model rewrites them)"),
        json_schema_extra=_flag(metavar="DIR"))
    queue_max: int = Field(100, ge=1, description="queued predictions before answering 429")
    allow_host: list[str] = Field(default_factory=list, description=(
        "host on a loopback/private address that input URLs and webhooks may reach (repeatable)"),
        json_schema_extra=_flag(metavar="HOST"))
    fetch_max_bytes: int = Field(FetchPolicy.max_bytes, ge=1, description="largest input file fetched from a URL")
    fetch_timeout_s: float = Field(FetchPolicy.timeout_s, gt=0, description="timeout of one input URL fetch")
    fetch_allow_private: bool = Field(False, description=(
        "let input URLs and webhooks reach private and loopback addresses (trusted networks only)"))
    no_worker: bool = Field(False, description="accept and store predictions only; no GPU worker in this process")
    max_render_side: int | None = Field(None, ge=0, description=(
        "render at most this many pixels on the longer side and resize the video to the requested size (CPU "
        "demos; default 256 when only tiny models are served, else no cap; 0 = no cap)"),
        json_schema_extra=_flag(metavar="PIXELS"))
    webhook_attempts: int = Field(6, ge=1, le=20, description="delivery attempts per webhook")
    output_retention_hours: float = Field(24.0, ge=0, description=(
        "delete a finished prediction's output files H hours after it finished; it then reports data_removed "
        "(0 = keep forever; fractions allowed)"), json_schema_extra=_flag(metavar="H"))
    file_retention_hours: float = Field(24.0, ge=0, description=(
        "uploaded files expire H hours after upload and are deleted (0 = keep forever; fractions allowed)"),
        json_schema_extra=_flag(metavar="H"))
    metrics_public: bool = Field(False, description=(
        "serve GET /metrics without the API key (for a Prometheus that cannot send one)"))
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description=(
        "bearer token that sees, lists and cancels every key's predictions and files (repeatable; "
        "VACE_ADMIN_KEYS takes a comma-separated list); each --api-key sees only its own"),
        json_schema_extra=_flag(flag="admin-key", metavar="KEY"))
    max_body_mb: float = Field(64.0, gt=0, description=(
        "largest JSON request body in MB (inputs given as data: URIs count); larger answers 413"))
    max_upload_mb: float = Field(512.0, gt=0, description="largest file upload in MB; larger answers 413")
    max_json_depth: int = Field(32, ge=4, le=256, description="deepest nesting of arrays/objects in a JSON body")
    worker_timeout_s: float = Field(600.0, gt=0, description=(
        "a worker that sends no heartbeat for this long (a hung GPU, a stopped process) is killed and replaced, "
        "and its job fails saying so; the worker beats at every denoising step and between a job's phases, so "
        "this must exceed the slowest of those (the first, compiled step; a model switch; input preparation)"),
        json_schema_extra=_flag(flag="worker-timeout", metavar="SECONDS"))
    drain_timeout_s: float = Field(60.0, ge=0, description=(
        "on SIGTERM/SIGINT: stop taking jobs and give the running one this long to finish, then requeue it"),
        json_schema_extra=_flag(flag="drain-timeout", metavar="SECONDS"))
    test_stop_at_step: int | None = Field(None, ge=0, description=(
        "fault-test hook: the first worker stops itself (SIGSTOP) at this denoising step of its first job (0: just "
        "before denoising starts); with --executor ray, the actor given the first job"),
        json_schema_extra=_flag(metavar="STEP"))
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="what the log shows")

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):  # an environment variable: comma-separated, blank = none
            return [k.strip() for k in value.split(",")] if value.strip() else []
        return value

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _usable_keys(cls, value: list[str], info: Any) -> list[str]:
        check_keys(value, "--admin-key" if info.field_name == "admin_keys" else "--api-key")
        return value

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        """s3://BUCKET[/PREFIX]: the only object store the server is tested against."""
        if value is None or not value.strip():
            return None
        parsed = urllib.parse.urlparse(value.strip())
        if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
            raise ValueError(f"expected s3://BUCKET[/PREFIX], got {value!r}")
        return value.strip().rstrip("/")

    @field_validator("storage_options", mode="before")
    @classmethod
    def _storage_options(cls, value: Any) -> Any:
        if isinstance(value, str):  # the flag or VACE_STORAGE_OPTIONS: a JSON object
            if not value.strip():
                return None
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON object: {exc}") from None
            if not isinstance(value, dict):
                raise ValueError("must be a JSON object, e.g. {\"endpoint_url\": \"http://127.0.0.1:9000\"}")
        return value

    @field_validator("turbo_for")
    @classmethod
    def _known_turbo_values(cls, value: list[str]) -> list[str]:
        parse_turbo_for(value)
        return value

    def turbo_map(self) -> TurboMap:
        """{dialect: hosted acceleration values that run preset turbo} (--turbo-for)."""
        return parse_turbo_for(self.turbo_for)

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(allow_hosts=set(self.allow_host), max_bytes=self.fetch_max_bytes,
                           timeout_s=self.fetch_timeout_s, allow_private=self.fetch_allow_private)

    def safety(self) -> SafetyConfig:
        """The safety checker (`tiny` = the tiny random one) and the policy when none is installed."""
        spec = (self.safety_checker or "").strip()
        checker = resolve_safety_checker() if spec == "tiny" else Path(spec) if spec not in ("", "none") else None
        return SafetyConfig(checker=checker, policy=self.safety_unavailable)

    def lora_config(self) -> LoraConfig:
        """The LoRA library, the URL LoRA cache (<data dir>/loras) and the distill recipe of preset turbo."""
        distill = DistillRecipe(self.distill_lora, self.distill_steps, self.distill_shift, self.distill_sampler,
                                self.distill_lora_low_noise) if self.distill_lora else None
        return LoraConfig(self.lora_dir, self.data_dir / "loras", self.lora_cache, distill)

    def storage_backend(self) -> Storage:
        """Where uploads and outputs are kept: the bucket of --storage, else the data dir."""
        return ObjectStorage(self.storage, self.storage_options) if self.storage else LocalStorage(self.data_dir)

    def helper_dirs(self) -> HelperDirs:
        """Where the frame interpolators and prompt extenders are (None: beside the model)."""
        return HelperDirs(self.interpolators, self.prompt_extender, self.prompt_extender_vl)

    def served_models(self) -> dict[str, str]:
        """{served name: weights directory} from resolved `NAME=DIR` specs (see serve.resolve_models)."""
        return dict(spec.split("=", 1) for spec in self.model)

    def own_netlocs(self) -> set[str]:
        """host:port spellings that reach this server (its own file/output URLs become local paths)."""
        names = {self.host, *LOOPBACK_NAMES}
        out = {f"[{h}]:{self.port}" if ":" in h else f"{h}:{self.port}" for h in names}
        out.add(urllib.parse.urlparse(self.public_url or "").netloc)
        return out


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One argparse flag per settings field. Defaults are left out (SUPPRESS) so that only flags actually given
    override the environment."""
    for name, info in ServeSettings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(name, info)}
        annotation = info.annotation
        flag = flag_of(name)
        if annotation is bool:
            kwargs["action"] = "store_false" if extra.get("negate") else "store_true"
        else:
            if typing.get_origin(_unwrap(annotation)) is list:
                kwargs["action"] = "append"
            elif typing.get_origin(annotation) is Literal:
                kwargs["choices"] = list(typing.get_args(annotation))
            if extra.get("metavar"):
                kwargs["metavar"] = extra["metavar"]
        parser.add_argument(flag, **kwargs)


def from_flags(args: argparse.Namespace) -> ServeSettings:
    """The settings from parsed flags (only those given) over VACE_* variables over defaults. A bad value is a
    ValueError naming the flag (and its variable), one line per value."""
    given = {name: getattr(args, name) for name in ServeSettings.model_fields if hasattr(args, name)}
    try:
        return ServeSettings(**given)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{flag_of(str(e['loc'][0]))} (VACE_{str(e['loc'][0]).upper()}): {e['msg']}"
                                   for e in exc.errors())) from None


def flag_of(name: str) -> str:
    """The command-line flag of a settings field."""
    info = ServeSettings.model_fields[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return "--" + str(extra.get("negate") or extra.get("flag") or name.replace("_", "-"))


def _unwrap(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


def _help(name: str, info: Any) -> str:
    default = info.get_default(call_default_factory=True)
    shown = "" if default in (None, [], False) else f" (default: {default})"
    return f"{info.description}{shown} [env: VACE_{name.upper()}]"
