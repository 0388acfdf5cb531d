"""LoRAs at submit: every LoRA a request names resolves and fits the model it runs on, before anything is stored;
and the listing of the LoRA library (GET /v1/loras)."""

from __future__ import annotations

import functools
from typing import Any

from vace.pipelines.acceleration.presets import DistillRecipe, check_distill, get_preset
from vace.pipelines.engine.loras import LoraConfig, LoraLibrary, check_request_loras
from vace.pipelines.job.loras import parse_loras
from vace.pipelines.job.request import GenerationRequest, RequestError
from vace.pipelines.media.fetch import FetchPolicy
from vace.server.service.served import served_linears, served_two_experts


def check_loras(request: GenerationRequest, model: str, model_dir: str | None, config: LoraConfig,
                policy: FetchPolicy | None, allow_paths: bool = False) -> None:
    """RequestError naming the field: a local path from a client (unless `allow_paths`: a batch rendered in its
    own process), a name not in the library, a LoRA (or the distill of preset turbo) that does not fit the
    model, or turbo with no distill configured. A URL not fetched before is checked by the worker once fetched."""
    check_distill(request, config.distill)
    specs = parse_loras(request.loras)
    for i, spec in enumerate(specs):
        if spec.path is not None and not allow_paths:
            raise RequestError(f"loras[{i}].path", "local paths are not accepted by the server; use name (a LoRA "
                                                   "in its library, GET /v1/loras) or url")
    turbo = get_preset(request.preset).distill and config.distill is not None
    if model_dir is None or not (specs or turbo):
        return
    if specs:
        check_request_loras(specs, config.library(policy, allow_paths=allow_paths),
                            functools.partial(served_linears, model_dir), served_two_experts(model_dir), model)
    if turbo:
        check_distill_fits(config, model, model_dir)


def check_distill_fits(config: LoraConfig, model: str, model_dir: str) -> None:
    """RequestError naming `preset` when the distill LoRA of preset turbo does not resolve or fit the model;
    ModelUnreadable when the served model's files cannot be read. The model's files are read once per process
    (served.py), the LoRA's header once per file version."""
    if config.distill is None:
        return  # nothing to fit: check_distill refuses turbo without one
    two_experts = served_two_experts(model_dir)
    try:
        check_request_loras(config.distill.specs(two_experts), config.library(),
                            functools.partial(served_linears, model_dir), two_experts, model)
    except RequestError as exc:
        raise RequestError("preset", f"the distill LoRA of preset turbo (--distill-lora): {exc.message}") from None


def library_listing(library: LoraLibrary, distill: DistillRecipe | None, models: dict[str, str]) -> dict[str, Any]:
    """The library's LoRAs (name, size, sha256, key format, detected base model, served models it fits) and
    the distill preset turbo runs."""
    fits = {name: served_linears(path) for name, path in models.items()}
    return {"loras": library.entries(fits),
            "distill": None if distill is None else {"lora": distill.lora, "steps": distill.steps, "guidance": 1.0,
                                                      "shift": distill.shift, "sampler": distill.sampler,
                                                      **({"low_noise_lora": distill.low_noise_lora}
                                                         if distill.low_noise_lora else {})}}
