"""Which served model an endpoint runs on: one- or two-expert, read from each model's model_index.json."""

from __future__ import annotations

import functools

from vace.server.service.errors import ServiceError
from vace.server.service.served import ModelUnreadable, served_two_experts


class ModelUnavailable(ServiceError):
    status, title = 404, "Model not available"


@functools.lru_cache(maxsize=64)
def _is_two_expert(path: str) -> bool:
    """Whether a served model has two experts; one whose model_index.json cannot be read counts as one expert
    (its jobs then fail naming the unreadable file). Cached, the failure too: it is logged once, not per request."""
    try:
        return served_two_experts(path)
    except ModelUnreadable:
        return False


def two_expert_models(models: dict[str, str]) -> dict[str, bool]:
    """Served model name -> whether it is a two-expert (Wan2.2-style) model."""
    return {name: _is_two_expert(str(path)) for name, path in models.items()}


def pick_model(models: dict[str, str], two_experts: bool, app: str) -> str:
    """The served model an endpoint runs on; ModelUnavailable names what is missing."""
    kinds = two_expert_models(models)
    for name, is_two in kinds.items():
        if is_two == two_experts:
            return name
    wanted = "a two-expert Wan2.2-VACE-Fun-A14B model" if two_experts else "a single-expert Wan2.1-VACE model"
    served = ", ".join(f"{n} ({'two experts' if t else 'single expert'})" for n, t in kinds.items())
    hint = "; start the server with --model <Wan2.2-VACE-Fun-A14B dir>" if two_experts else ""
    raise ModelUnavailable(f"{app} needs {wanted} and none is loaded on this server (serving: {served}){hint}")
