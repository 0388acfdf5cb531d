"""A batch manifest: JSONL or CSV, one job per row, read and checked before anything is queued.

A row holds any field of the server's own request schema (the `vace/<model>` input, i.e. GenerationRequest's
fields) plus an optional `id` (what resume matches rows by; default `row<N>`, N the row's position) and an
optional `output` (the file name written under the batch's output folder; default `<id>.mp4`). Media fields
hold an http(s) URL, a data: URI or a local path (relative to the manifest's folder).

CSV cells are text: numbers and booleans are parsed by the field's type, `reference_images` takes a JSON
array or paths separated by `|`, `task_options` a JSON object; an empty cell leaves the field out.

`loras` (the LoRAs a job runs with): in JSONL the request's own list, `[{"name": "style", "scale": 0.8},
{"url": "https://…/x.safetensors", "expert": "low_noise"}]`; in CSV the compact `NAME_OR_URL[:SCALE]` entries
separated by `;`, e.g. `style:0.8;https://…/x.safetensors` (every LoRA on both experts; use JSONL to pick one).
Against a server, names are checked against its library (GET /v1/loras) and the model they must fit.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vace.pipelines.acceleration.presets import resolve_preset
from vace.pipelines.conditioning.tasks import TASKS, implied_task
from vace.pipelines.conditioning.tasks.options import parse_options
from vace.pipelines.job.loras import NAME_PATTERN
from vace.pipelines.job.request import GenerationRequest, RequestError, changed_media
from vace.server.api.replicate.schema import NATIVE_INPUT, check_input
from vace.server.service.errors import InvalidInput

ROW_FIELDS = ("id", "output")  # the batch's own columns, not sent to the server
URL_PREFIXES = ("http://", "https://", "data:")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class ManifestError(Exception):
    """The manifest as a whole cannot be read (missing file, unknown format)."""


@dataclass(frozen=True)
class Problem:
    line: int
    row_id: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line} ({self.row_id}): {self.field}: {self.message}"


@dataclass
class Row:
    """One job of the manifest. `input` is as written (media still local paths)."""

    line: int
    id: str
    output: str
    input: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)

    def problem(self, field_name: str, message: str) -> None:
        self.problems.append(Problem(self.line, self.id, field_name, message))

    @property
    def fingerprint(self) -> str:
        """What the row asks for (its input and output name); a finished row whose fingerprint changed is not
        the same job any more."""
        blob = json.dumps([self.input, self.output], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Manifest:
    path: Path
    rows: list[Row]

    @property
    def problems(self) -> list[Problem]:
        return [p for row in self.rows for p in row.problems]

    def media_path(self, ref: str) -> Path:
        """A local media reference, relative to the manifest's folder."""
        path = Path(ref).expanduser()
        return path if path.is_absolute() else self.path.parent / path


def read_manifest(path: str | Path) -> Manifest:
    """Parse every row (JSONL or CSV by the file's suffix); what a row gets wrong is in its `problems`."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = list(_jsonl_records(path))
    elif suffix == ".csv":
        records = list(_csv_records(path))
    else:
        raise ManifestError(f"{path}: a manifest is .jsonl (one JSON object a line) or .csv (a header row first)")
    rows = [_row(position, line, data, error) for position, (line, data, error) in enumerate(records, 1)]
    _check_unique(rows)
    return Manifest(path, rows)


def _jsonl_records(path: Path):
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line, {}, ("row", f"not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(data, dict):
            yield line, {}, ("row", "must be a JSON object")
            continue
        yield line, data, None


def _csv_records(path: Path):
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            return
        header = [name.strip() for name in header]
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(header):
                yield line, {}, ("row", f"{len(cells)} cells but the header names {len(header)} columns")
                continue
            data: dict[str, Any] = {}
            errors = []
            for name, cell in zip(header, cells, strict=False):  # a short row leaves the rest out
                if not cell.strip():
                    continue
                try:
                    data[name] = _cell(name, cell.strip())
                except ValueError as exc:
                    errors.append((name, str(exc)))
            yield line, data, errors[0] if errors else None


def _cell(name: str, text: str) -> Any:
    """A CSV cell as the value the field's type asks for (unknown columns stay text)."""
    if name == "loras":
        return compact_loras(text)
    kind = NATIVE_INPUT.get(name, {}).get("type", "string")
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"must be an integer, got {text!r}") from None
    if kind == "number":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"must be a number, got {text!r}") from None
        return int(value) if value.is_integer() and "." not in text else value
    if kind == "boolean":
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"must be true or false, got {text!r}")
    if kind == "array":
        if text.startswith("["):
            return _json_cell(text, list, "a JSON array")
        return [part.strip() for part in text.split("|") if part.strip()]
    if kind == "object":
        return _json_cell(text, dict, "a JSON object")
    return text


def compact_loras(text: str) -> list[dict[str, Any]]:
    """A CSV `loras` cell, `NAME_OR_URL[:SCALE]` entries separated by `;`, as the request's list; ValueError
    naming the entry that is neither."""
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(part.strip() for part in text.split(";")):
        if not entry:
            continue
        ref, sep, tail = entry.rpartition(":")
        if not sep or "/" in tail:  # no scale: a name, or a URL whose last ':' is its scheme's or its port's
            ref, tail = entry, ""
        try:
            scale = float(tail) if tail else 1.0
        except ValueError:
            raise ValueError(f"entry {i + 1} {entry!r}: the scale after the last ':' must be a number") from None
        key = "url" if ref.lower().startswith(("http://", "https://")) else "name"
        if key == "name" and not NAME_PATTERN.fullmatch(ref):
            raise ValueError(f"entry {i + 1} {entry!r}: give a LoRA name from the library or an http(s) URL, "
                             "each with an optional :SCALE")
        out.append({key: ref, "scale": scale})
    return out


def _json_cell(text: str, kind: type, what: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"must be {what}, got {text!r}") from None
    if not isinstance(value, kind):
        raise ValueError(f"must be {what}, got {text!r}")
    return value


def _row(position: int, line: int, data: dict[str, Any], error: tuple[str, str] | None) -> Row:
    row_id = data.pop("id", None)
    output = data.pop("output", None)
    row = Row(line, str(row_id) if row_id is not None else f"row{position}", "", data)
    if error:
        row.problem(*error)
    if row_id is not None and not (isinstance(row_id, (str, int)) and _ID.match(str(row_id))):
        row.problem("id", "must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    row.output = str(output) if output is not None else f"{row.id}.mp4"
    if output is not None and not _safe_output(output):
        row.problem("output", f"must be a relative .mp4 path inside the output folder, got {output!r}")
    return row


def _safe_output(name: Any) -> bool:
    if not isinstance(name, str) or not name.lower().endswith(".mp4") or "\\" in name:
        return False
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and ".." not in parts


def _check_unique(rows: list[Row]) -> None:
    first_id: dict[str, int] = {}
    first_output: dict[str, int] = {}
    for row in rows:
        if row.id in first_id:
            row.problem("id", f"{row.id!r} is already used by line {first_id[row.id]}")
        first_id.setdefault(row.id, row.line)
        key = row.output.lower()
        if key in first_output:
            row.problem("output", f"{row.output!r} is already written by line {first_output[key]}")
        first_output.setdefault(key, row.line)


def check_rows(manifest: Manifest, schema: dict[str, dict[str, Any]] | None = None,
               task_check: Any = None, lora_check: Any = None) -> list[Problem]:
    """Check every row: the schema's field names and types (`schema`: the server's published input schema,
    default this package's own), the ranges GenerationRequest enforces (the form of `loras` too), task name and
    options, and that every local media file exists. `task_check(request)` replaces the task check (e.g. the
    full preflight with the annotator weights of a local model); `lora_check(request)` checks the LoRAs and
    preset turbo against where the rows will run (see server_lora_check). Returns every problem of every row."""
    for row in manifest.rows:
        if row.problems:  # unreadable row: nothing more to say about it
            continue
        try:
            check_input(schema or NATIVE_INPUT, ["prompt"], row.input)
        except InvalidInput as exc:
            for field_name, message in exc.errors:
                row.problem(field_name, message)
            continue
        for field_name, ref in media_refs(row.input):
            if not isinstance(ref, str) or ref.startswith(URL_PREFIXES):
                continue
            path = manifest.media_path(ref)
            if not path.is_file():
                row.problem(field_name, f"file not found: {path}")
        try:
            request = validated(row.input)
            (task_check or check_task)(request)
            if lora_check is not None:
                lora_check(request)
        except RequestError as exc:
            row.problem(exc.field, exc.message)
    return manifest.problems


def validated(data: dict[str, Any]) -> GenerationRequest:
    """A row's input as the server validates it (ranges, 4n+1 frames, preset by level name)."""
    return resolve_preset(GenerationRequest.from_dict(data).validated())


def check_task(request: GenerationRequest) -> None:
    """Task name and task_options, as the server checks them (annotator weights are the server's to check)."""
    name = request.task or implied_task(bool(request.video), bool(request.mask), bool(request.first_frame),
                                        bool(request.last_frame), bool(request.reference_images))
    if name not in TASKS:
        raise RequestError("task", f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    parse_options(name, request.task_options)


def server_lora_check(listing: dict[str, Any], model: str) -> Any:
    """A lora_check for rows sent to a server, from its GET /v1/loras: library names it has that fit `model`,
    no local paths (the server takes names and URLs), and preset turbo only where it has a distill LoRA."""
    fits = {e["name"]: e.get("fits", []) for e in listing.get("loras", [])}
    unreadable = {e["name"]: e["error"] for e in listing.get("loras", []) if e.get("error")}

    def check(request: GenerationRequest) -> None:
        for i, lora in enumerate(request.loras):
            if "path" in lora:
                raise RequestError(f"loras[{i}].path", "a server takes a LoRA name from its library or an http(s) "
                                                       "URL, not a local path")
            name = lora.get("name")
            if name is not None and name not in fits:
                raise RequestError(f"loras[{i}].name", f"the server has no LoRA named {name!r}; it has: "
                                                       f"{', '.join(sorted(fits)) or 'none'}")
            if name in unreadable:
                raise RequestError(f"loras[{i}].name", f"the server cannot use LoRA {name!r}: {unreadable[name]}")
            if name is not None and model not in fits[name]:
                raise RequestError(f"loras[{i}].name", f"LoRA {name!r} does not fit model {model}")
        if request.preset == "turbo" and listing.get("distill") is None:
            raise RequestError("preset", "preset turbo needs a step-distillation LoRA and the server has none "
                                         "(it starts with --distill-lora to offer it)")
    return check


def media_refs(data: dict[str, Any]) -> list[tuple[str, Any]]:
    """(field, value) of every media reference in a row's input."""
    refs = changed_media(data, lambda ref, name: (name, ref))
    images = refs.pop("reference_images", [])
    return [*refs.values(), *images]


def with_local_media(data: dict[str, Any], resolve: Callable[[str], str]) -> dict[str, Any]:
    """The input with every local media reference replaced by `resolve(ref)` (URLs and data: URIs kept)."""
    return data | changed_media(data, lambda ref, _: ref if not isinstance(ref, str) or ref.startswith(URL_PREFIXES)
                                else resolve(ref))
