"""What a served model's directory holds, read from its files once per process: a served directory does not
change while it is served, so submits and listings do not re-read model_index.json or the transformer headers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from types import MappingProxyType

from vace.pipelines.engine.loras import linear_shapes_from_weights
from vace.server.service.errors import ServiceError
from vace.weights.loader import two_experts_at
from vace.weights.safetensors_header import HeaderError

log = logging.getLogger("vace.server")


class ModelUnreadable(ServiceError):
    """A served model's directory can no longer be read (the server's weights, not the client's input). Clients
    are told only that; `reason` (the directory and what failed) is logged for the operator."""

    status, title = 503, "Model unreadable"

    def __init__(self, reason: str):
        super().__init__("a served model's files cannot be read; the server's log says which and why")
        self.reason = reason


def _unreadable(reason: str) -> ModelUnreadable:
    log.error("%s", reason)
    return ModelUnreadable(reason)


@functools.lru_cache(maxsize=64)
def served_two_experts(model_dir: str) -> bool:
    """Whether the served model at `model_dir` has two experts; ModelUnreadable if its model_index.json is
    missing or not JSON."""
    try:
        return two_experts_at(model_dir)
    except (OSError, ValueError) as exc:
        raise _unreadable(f"the served model at {model_dir} has no readable model_index.json ({exc})") from None


@functools.lru_cache(maxsize=64)
def served_linears(model_dir: str, sub: str = "transformer") -> Mapping[str, tuple[int, int]]:
    """module name -> (out, in) features of the served model's `sub` transformer, from its file headers;
    ModelUnreadable if a header cannot be read."""
    try:
        return MappingProxyType(linear_shapes_from_weights(model_dir, sub))
    except (HeaderError, OSError) as exc:
        raise _unreadable(f"the served model at {model_dir} has unreadable {sub} weights ({exc})") from None
