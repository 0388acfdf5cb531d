"""LoRA adapters on a loaded model: resolve a request's LoRAs to files, convert their keys with diffusers' own
converters, check them against the transformer, keep them loaded in an LRU, and activate them per job.

Key formats: diffusers/PEFT (`transformer.blocks.0.attn1.to_q.lora_A.weight`), ComfyUI (`diffusion_model.`
+ lora_down/lora_up/alpha, the format most published Wan LoRAs use) and kohya/musubi-tuner (`lora_unet_`);
WanLoraLoaderMixin.lora_state_dict turns the last two into the first. Only .safetensors files are read (a
pickled checkpoint can run code).

Hot swap: adapters stay loaded (PEFT layers, named by the file's sha256) and are switched per job with
`set_adapters`; outside `applied()` every adapter is disabled, so a job without LoRAs runs the base weights
exactly. Fusing a repeated set into the weights would save the LoRA matmuls (a few percent at rank 32) but
unfusing does not restore the base weights bit for bit in bf16, so jobs after it could differ: not done.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import tempfile
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vace.pipelines.acceleration.presets import DistillRecipe
from vace.pipelines.engine.lora_keys import UnknownKeys, converted_shapes
from vace.pipelines.job.loras import LoraSpec, parse_loras
from vace.pipelines.job.request import RequestError
from vace.pipelines.media.fetch import FetchPolicy, materialize
from vace.weights.integrity import FileKey, cached_sha256, file_key, sha256_file
from vace.weights.safetensors_header import HeaderError, read_header

LORA_MAX_BYTES = 4 * 1024**3
ADAPTER_CAPACITY = 8
Linears = Mapping[str, tuple[int, int]]  # module name -> (out, in) features of a transformer's linear layers
_LORA_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora_B.bias")
# Transformer width -> the Wan model it belongs to (for listings and refusals).
WAN_WIDTHS = {1536: "Wan2.1 1.3B", 3072: "Wan2.2 TI2V 5B", 5120: "Wan 14B (Wan2.1 14B, Wan2.2 A14B)",
              24: "the tiny test model"}


@dataclass(frozen=True)
class LoraFile:
    """A resolved LoRA: a local .safetensors file, its sha256 and how the request named it."""

    path: Path
    sha256: str
    label: str


class LoraLibrary:
    """Where LoRAs come from: the library folder (`--lora-dir`, by name), local paths (where allowed) and URLs,
    fetched under the media URL policy into `cache_dir` and kept there by sha256 (a URL is fetched once)."""

    def __init__(self, root: str | Path | None = None, cache_dir: str | Path | None = None,
                 fetch_policy: FetchPolicy | None = None, allow_paths: bool = True,
                 max_bytes: int = LORA_MAX_BYTES):
        self.root = Path(root) if root else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.fetch_policy = replace(fetch_policy or FetchPolicy(), max_bytes=max_bytes)
        self.allow_paths = allow_paths

    def names(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.safetensors") if p.is_file())

    def resolve(self, spec: LoraSpec, field_name: str, fetch: bool = True) -> LoraFile | None:
        """The file a spec names; RequestError naming `field_name.<name|path|url>` if there is none.
        With fetch=False a URL not fetched before resolves to None instead of being downloaded."""
        where = f"{field_name}.{spec.source}"
        if spec.name is not None:
            if self.root is None:
                raise RequestError(where, "this server has no LoRA library (start it with --lora-dir)")
            path = self.root / (spec.name if spec.name.endswith(".safetensors") else f"{spec.name}.safetensors")
            if not path.is_file():
                known = self.names()
                raise RequestError(where, f"no LoRA named {spec.name!r} in the library; known: "
                                          f"{', '.join(known[:20]) or 'none'}")
            return LoraFile(path, cached_sha256(path), spec.name)
        if spec.path is not None:
            if not self.allow_paths:
                raise RequestError(where, "local paths are not accepted here; use name (a LoRA in the server's "
                                          "library) or url")
            path = Path(spec.path).expanduser()
            if not path.is_file():
                raise RequestError(where, f"file not found: {path}")
            if path.suffix != ".safetensors":
                raise RequestError(where, "only .safetensors LoRAs are accepted")
            return LoraFile(path, cached_sha256(path), spec.path)
        return self._fetched(spec.url or "", where, fetch)

    def _url_index(self) -> dict[str, str]:
        index = self.cache_dir / "urls.json" if self.cache_dir else None
        return json.loads(index.read_text()) if index and index.is_file() else {}

    def _fetched(self, url: str, where: str, fetch: bool) -> LoraFile | None:
        if self.cache_dir is None:
            raise RequestError(where, "this server fetches no LoRA URLs; use name (a LoRA in its library)")
        sha = self._url_index().get(url)
        if sha and (self.cache_dir / f"{sha}.safetensors").is_file():
            return LoraFile(self.cache_dir / f"{sha}.safetensors", sha, url)
        if not fetch:
            return None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".fetch-") as tmp:
            downloaded = materialize(url, where, Path(tmp), self.fetch_policy)
            _check_safetensors(downloaded, where)
            sha = sha256_file(downloaded)
            target = self.cache_dir / f"{sha}.safetensors"
            os.replace(downloaded, target)
        index = self._url_index() | {url: sha}
        staged = self.cache_dir / f".urls-{os.getpid()}.json"
        staged.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.replace(staged, self.cache_dir / "urls.json")
        return LoraFile(target, sha, url)

    def entries(self, models: Mapping[str, Linears] | None = None) -> list[dict[str, Any]]:
        """The library's LoRAs: name, size, sha256, key format and detected base model; with `models`
        (name -> linear_shapes_from_weights) also which served models each one fits."""
        out = []
        for name in self.names():
            path = self.root / f"{name}.safetensors"  # type: ignore[operator]
            entry: dict[str, Any] = {"name": name, "size": path.stat().st_size, "sha256": cached_sha256(path)}
            try:
                shapes, fmt = lora_shapes(path, name)
            except RequestError as exc:
                entry["error"] = exc.message
            else:
                entry["format"] = fmt
                entry["base_model"] = describe_base(shapes)
                if models is not None:
                    entry["fits"] = [m for m, linears in models.items() if not fit_problems(shapes, linears)]
            out.append(entry)
        return out


def _check_safetensors(path: Path, where: str) -> None:
    """RequestError unless the file is a whole .safetensors file, as the safetensors package checks it (the
    header and every tensor's offsets filling the data exactly): a fetched URL is cached only if it is one."""
    from safetensors import SafetensorError, safe_open  # loads only in workers, which fetch LoRA URLs

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError) as exc:
        raise RequestError(where, f"not a .safetensors file ({exc})") from None


def convert(state_dict: dict[str, Any], where: str) -> dict[str, Any]:
    """Raw LoRA tensors -> diffusers/PEFT keys (`transformer.` prefix) through WanLoraLoaderMixin's converters;
    RequestError if diffusers cannot read them or they hold anything but transformer LoRA factors."""
    from diffusers import WanVACEPipeline  # diffusers loads only where a model is built

    try:
        converted = WanVACEPipeline.lora_state_dict(state_dict)
    except (ValueError, KeyError, IndexError, RuntimeError, AttributeError) as exc:
        raise RequestError(where, f"not a Wan LoRA in a key format diffusers reads ({exc or type(exc).__name__})") \
            from None
    _check_keys(converted, where)
    return converted


def _check_keys(converted: Mapping[str, Any], where: str) -> None:
    if not converted:
        raise RequestError(where, "the file holds no LoRA weights")
    stray = [k for k in converted if not (k.startswith("transformer.") and k.endswith(_LORA_SUFFIXES))]
    if stray:
        raise RequestError(where, f"holds weights this server does not apply to a Wan transformer: "
                                  f"{', '.join(stray[:3])}")


def lora_shapes(path: Path, where: str) -> tuple[Mapping[str, tuple[int, ...]], str]:
    """(converted key -> shape, key format) of a LoRA file, from its header alone (lora_keys renames the keys as
    diffusers' converters do), so checking a LoRA at submit loads no weights and no torch. Read once per file
    version (path, size, mtime)."""
    try:
        shapes, fmt = _header_shapes(file_key(path))
    except (HeaderError, OSError) as exc:
        raise RequestError(where, f"not a readable .safetensors LoRA ({exc})") from None
    except UnknownKeys as exc:
        raise RequestError(where, f"not a Wan LoRA in a key format diffusers reads ({exc})") from None
    _check_keys(shapes, where)
    return shapes, fmt


@functools.lru_cache(maxsize=256)
def _header_shapes(key: FileKey) -> tuple[Mapping[str, tuple[int, ...]], str]:
    shapes, fmt = converted_shapes(read_header(key[0]))
    return MappingProxyType(shapes), fmt


def read_lora(path: Path, where: str) -> tuple[dict[str, Any], dict | None]:
    """The LoRA's converted tensors (CPU) and its diffusers adapter metadata (rank/alpha), if it has any."""
    from diffusers import WanVACEPipeline  # diffusers loads only where a model is built
    from safetensors import SafetensorError  # safetensors loads only where weights are read

    try:
        raw, metadata = WanVACEPipeline.lora_state_dict(str(path.parent), weight_name=path.name,
                                                        local_files_only=True, use_safetensors=True,
                                                        return_lora_metadata=True)
    except (SafetensorError, OSError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise RequestError(where, f"could not read the LoRA ({exc or type(exc).__name__})") from None
    return convert(raw, where), metadata


def linear_shapes_from_weights(model_dir: str | Path, sub: str = "transformer") -> dict[str, tuple[int, int]]:
    """module name -> (out, in) features of every 2-D weight in a model's transformer, from the headers."""
    shapes = {}
    for file in sorted((Path(model_dir) / sub).glob("*.safetensors")):
        for key, info in read_header(file).items():
            if key.endswith(".weight") and len(info.shape) == 2:
                shapes[key.removesuffix(".weight")] = (info.shape[0], info.shape[1])
    return shapes


def linear_shapes_from_module(transformer: Any) -> dict[str, tuple[int, int]]:
    """module name -> (out, in) features of every linear layer of a loaded transformer (PEFT-wrapped or not)."""
    shapes = {}
    for name, module in transformer.named_modules():
        if ".lora_" in name or name.endswith(".base_layer") or ".base_layer." in name:
            continue
        if isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None),
                                                                               int):
            shapes[name] = (module.out_features, module.in_features)
    return shapes


def fit_problems(shapes: Mapping[str, tuple[int, ...]], linears: Linears) -> list[str]:
    """Why a converted LoRA does not fit a transformer's linear layers (empty when it fits)."""
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        module, _, part = key.removeprefix("transformer.").rpartition(".lora_")
        modules.setdefault(module, {})[part] = shape
    problems = []
    for module, parts in sorted(modules.items()):
        a, b, bias = parts.get("A.weight"), parts.get("B.weight"), parts.get("B.bias")
        if module not in linears:
            problems.append(f"{module}: the model has no such layer")
        elif a is None or b is None or len(a) != 2 or len(b) != 2:
            problems.append(f"{module}: needs a 2-D lora_A and lora_B")
        elif a[0] != b[1]:
            problems.append(f"{module}: lora_A has rank {a[0]}, lora_B rank {b[1]}")
        elif (b[0], a[1]) != linears[module]:
            out_f, in_f = linears[module]
            problems.append(f"{module}: the LoRA maps {a[1]}->{b[0]} features, the model's layer {in_f}->{out_f}")
        elif bias is not None and bias != (b[0],):
            problems.append(f"{module}: lora_B.bias has shape {bias}, the layer has {b[0]} outputs")
    return problems


def describe_base(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """What a LoRA was made for, read from its shapes: transformer width, blocks, rank and the Wan model."""
    width = next((s[1] for k, s in shapes.items() if ".attn1.to_q.lora_A" in k), None)
    if width is None:
        width = next((s[1] for k, s in shapes.items() if ".attn1." in k and ".lora_A." in k), None)
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"transformer\.blocks\.(\d+)\.", k))}
    ranks = {s[0] for k, s in shapes.items() if k.endswith("lora_A.weight")}
    return {"model": WAN_WIDTHS.get(width, "unknown") if width else "unknown", "width": width,
            "blocks": max(blocks) + 1 if blocks else 0, "rank": max(ranks) if ranks else 0,
            "image_to_video": any(".add_k_proj." in k for k in shapes),
            "vace_blocks": any(k.startswith("transformer.vace_blocks.") for k in shapes)}


def check_fits(shapes: Mapping[str, tuple[int, ...]], linears: Linears, where: str, label: str,
               model_name: str) -> None:
    """RequestError naming `where` if the LoRA does not fit the model (made for another base model or rank)."""
    problems = fit_problems(shapes, linears)
    if problems:
        base = describe_base(shapes)
        made_for = f"made for {base['model']}, width {base['width']}, {base['blocks']} blocks"
        raise RequestError(where, f"LoRA {label!r} does not fit model {model_name} ({made_for}): "
                                  f"{len(problems)} layer(s) differ, e.g. {'; '.join(problems[:2])}")


def expert_subfolders(expert: str, two_experts: bool, where: str) -> tuple[str, ...]:
    """The transformer subfolders a LoRA for `expert` goes into; RequestError on a one-transformer model."""
    if expert == "both":
        return ("transformer", "transformer_2") if two_experts else ("transformer",)
    if not two_experts:
        raise RequestError(f"{where}.expert", f"{expert!r} needs a two-expert model (Wan2.2 A14B); this model has "
                                              f"one transformer: use 'both' or leave it out")
    return ("transformer",) if expert == "high_noise" else ("transformer_2",)


def check_request_loras(specs: Sequence[LoraSpec], library: LoraLibrary, linears: Callable[[str], Linears],
                        two_experts: bool, model_name: str, field_name: str = "loras") -> None:
    """What a server checks at submit, from file headers only: every LoRA resolves and fits the model's
    transformer(s), whose layers `linears(subfolder)` gives (linear_shapes_from_weights, or a cache of it). A URL
    not fetched yet is checked by the worker after fetching it."""
    for i, spec in enumerate(specs):
        where = f"{field_name}[{i}]"
        subs = expert_subfolders(spec.expert, two_experts, where)
        file = library.resolve(spec, where, fetch=False)
        if file is None:
            continue
        shapes, _ = lora_shapes(file.path, f"{where}.{spec.source}")
        for sub in subs:
            check_fits(shapes, linears(sub), f"{where}.{spec.source}", file.label, model_name)


@dataclass(frozen=True)
class LoraConfig:
    """A server's (or vace generate's) LoRA settings: the library folder, the folder URL LoRAs are cached in,
    how many adapters stay loaded, and the step-distillation recipe preset turbo runs."""

    library_dir: Path | None = None
    cache_dir: Path | None = None
    capacity: int = ADAPTER_CAPACITY
    distill: DistillRecipe | None = None

    def library(self, fetch_policy: FetchPolicy | None = None, allow_paths: bool = True) -> LoraLibrary:
        return LoraLibrary(self.library_dir, self.cache_dir, fetch_policy, allow_paths)


@dataclass(frozen=True)
class ActiveLora:
    """A resolved LoRA with the scale and expert one job uses it at."""

    file: LoraFile
    scale: float = 1.0
    expert: str = "both"


def resolve_loras(loras: Sequence[dict[str, Any]], library: LoraLibrary,
                  field_name: str = "loras") -> list[ActiveLora]:
    """A request's `loras` as local files (URLs fetched) with their scales and experts."""
    return [ActiveLora(library.resolve(spec, f"{field_name}[{i}]"), spec.scale, spec.expert)  # type: ignore[arg-type]
            for i, spec in enumerate(parse_loras(list(loras), field_name))]


@dataclass
class _Adapter:
    name: str
    loaded_into: set[int] = field(default_factory=set)  # transformer indexes


class LoraAdapters:
    """The adapters loaded into one pipeline's transformers, keyed by file sha256; beyond `capacity` the least
    recently used one is deleted. `applied(loras)` activates a job's set and disables every adapter after."""

    def __init__(self, pipe: Any, model_name: str = "model", capacity: int = ADAPTER_CAPACITY):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._pipe = weakref.ref(pipe)  # see prompt_cache_for: the registry must not keep the weights alive
        self.model_name = model_name
        self.capacity = capacity
        self._adapters: OrderedDict[str, _Adapter] = OrderedDict()
        self.loads = 0

    @property
    def transformers(self) -> list[Any]:
        pipe = self._pipe()
        return [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]

    def loaded(self) -> list[str]:
        """sha256 of the loaded adapters, least recently used first."""
        return list(self._adapters)

    def _targets(self, expert: str, where: str) -> tuple[int, ...]:
        subs = expert_subfolders(expert, len(self.transformers) > 1, where)
        return tuple(0 if s == "transformer" else 1 for s in subs)

    def load(self, file: LoraFile, targets: Sequence[int], where: str) -> str:
        """Load a LoRA into the target transformers (once; later calls are cache hits); its adapter name."""
        adapter = self._adapters.setdefault(file.sha256, _Adapter(f"lora_{file.sha256[:16]}"))
        self._adapters.move_to_end(file.sha256)
        missing = [t for t in targets if t not in adapter.loaded_into]
        if not missing:
            return adapter.name
        try:
            state, metadata = read_lora(file.path, where)
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            for index in missing:
                transformer = self.transformers[index]
                check_fits(shapes, linear_shapes_from_module(transformer), where, file.label, self.model_name)
                with warnings.catch_warnings():  # PEFT warns on every adapter after the first: expected here
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
                    transformer.load_lora_adapter(dict(state), adapter_name=adapter.name, prefix="transformer",
                                                  metadata=metadata, _pipeline=self._pipe())
                transformer.disable_lora()  # loaded, not active: only applied() turns adapters on
                adapter.loaded_into.add(index)
                self.loads += 1
        finally:
            if not adapter.loaded_into:
                del self._adapters[file.sha256]
        return adapter.name

    def _evict(self, keep: set[str]) -> None:
        while len(self._adapters) > self.capacity:
            victim = next((sha for sha in self._adapters if sha not in keep), None)
            if victim is None:
                return
            adapter = self._adapters.pop(victim)
            for index in adapter.loaded_into:
                self.transformers[index].delete_adapters(adapter.name)

    def _with_adapters(self) -> list[tuple[int, Any]]:
        return [(i, t) for i, t in enumerate(self.transformers) if getattr(t, "peft_config", None)]

    @contextlib.contextmanager
    def applied(self, loras: Sequence[ActiveLora], field_name: str = "loras") -> Iterator[list[dict[str, Any]]]:
        """Activate exactly `loras` (at their scales, on their experts) for the block; yields one record per
        LoRA for the job's metrics. Every adapter is disabled again on exit, also on error."""
        weights: list[dict[str, float]] = [{} for _ in self.transformers]
        records = []
        for i, lora in enumerate(loras):
            where = f"{field_name}[{i}]"
            targets = self._targets(lora.expert, where)
            before = self.loads
            name = self.load(lora.file, targets, where)
            for index in targets:
                weights[index][name] = weights[index].get(name, 0.0) + lora.scale
            records.append({"lora": lora.file.label, "sha256": lora.file.sha256, "scale": lora.scale,
                            "expert": lora.expert, "cached": self.loads == before})
        self._evict({lora.file.sha256 for lora in loras})
        try:
            for index, transformer in self._with_adapters():
                if weights[index]:
                    transformer.set_adapters(list(weights[index]), list(weights[index].values()))
                    transformer.enable_lora()
                else:
                    transformer.disable_lora()
            yield records
        finally:
            for _, transformer in self._with_adapters():
                transformer.disable_lora()


_BY_PIPELINE: weakref.WeakKeyDictionary[Any, LoraAdapters] = weakref.WeakKeyDictionary()


def adapters_for(model: Any, capacity: int = ADAPTER_CAPACITY) -> LoraAdapters:
    """The one adapter cache of a loaded model (weights.loader.LoadedModel), shared by every renderer on it."""
    adapters = _BY_PIPELINE.get(model.pipeline)
    if adapters is None:
        adapters = _BY_PIPELINE[model.pipeline] = LoraAdapters(model.pipeline, model.name, capacity)
    return adapters
