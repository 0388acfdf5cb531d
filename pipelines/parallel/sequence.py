"""Sequence (context) parallelism for WanVACETransformer3DModel, built on diffusers' context-parallel hooks.

diffusers 0.42 ships a `_cp_plan` for WanTransformer3DModel but none for the VACE model, whose forward runs
the VACE blocks on the *unsharded* video tokens before `blocks.0`. `VACE_CP_PLAN` splits, along the token
sequence, the rotary embeddings (output of `rope`), the video and control tokens where they enter the first
VACE block, and the video tokens where they enter the first main block; the control hints the VACE blocks
produce are therefore sharded exactly like the video tokens they are added to. `proj_out` gathers the
sequence back, so every rank ends the forward with the full prediction (and the scheduler step stays
identical on every rank). Reference-image latent frames are ordinary frames at the front of the latent
video: the split is on the flattened token sequence, after rope has been computed for the whole grid.

Token counts that do not divide by the group size use diffusers' "anything" variants (uneven
`tensor_split` shards; all-to-all / ring with per-rank sizes), so no padding or key masking is needed. The
output gather is ours (`SequenceGatherHook`): diffusers' uneven gather calls `all_gather` with unequal
tensor sizes, which gloo rejects; we pad each shard to the largest, gather, and trim.

Attention: "ulysses" all-to-alls heads <-> sequence (any head count; the 14B's 40 heads split evenly over
2, 4, 5 or 8 ranks, other sizes pad heads); "ring" passes key/value shards around the group and merges
partial results with their log-sum-exp. diffusers' "native" (SDPA) backend returns no log-sum-exp, so ring
runs on cuDNN attention on CUDA and, on CPU, on PyTorch's CPU flash-attention kernel through
`RingKernelAttnProcessor` below.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.context_parallel import PartitionAnythingSharder, apply_context_parallel
from diffusers.models._modeling_parallel import (
    ContextParallelConfig,
    ContextParallelInput,
    ParallelConfig,
    gather_size_by_comm,
)
from diffusers.models.attention_dispatch import _templated_context_parallel_attention
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor, _get_qkv_projections

SP_MODES = ("ulysses", "ring")
CUDA_RING_BACKEND = "_native_cudnn"

_SPLIT_TOKENS = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
_SPLIT_ROPE = ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)

VACE_CP_PLAN: dict[str, Any] = {
    "rope": {0: _SPLIT_ROPE, 1: _SPLIT_ROPE},
    "vace_blocks.0": {"hidden_states": _SPLIT_TOKENS, "control_hidden_states": _SPLIT_TOKENS},
    "blocks.0": {"hidden_states": _SPLIT_TOKENS},
}
GATHER_MODULE = "proj_out"  # its output (B, tokens, C) is gathered along the tokens by SequenceGatherHook


def context_parallel_config(mode: str, group_size: int) -> ContextParallelConfig:
    """The diffusers config for `mode` over `group_size` ranks (uneven sequence shards allowed)."""
    if mode not in SP_MODES:
        raise ValueError(f"unknown sequence-parallel mode {mode!r}; choose one of {', '.join(SP_MODES)}")
    if group_size < 2:
        raise ValueError(f"sequence parallelism needs a group of at least 2 ranks, got {group_size}")
    if mode == "ulysses":
        return ContextParallelConfig(ulysses_degree=group_size, ulysses_anything=True)
    return ContextParallelConfig(ring_degree=group_size, ring_anything=True)


def _cpu_flash_forward_op(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                          scale: float | None = None, enable_gqa: bool = False, return_lse: bool = False,
                          _save_ctx: bool = True, _parallel_config: ParallelConfig | None = None) -> Any:
    """A diffusers templated-attention forward op on PyTorch's CPU flash kernel; (B, S, H, D) in and out,
    log-sum-exp as (B, S, H)."""
    q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)
    out = out.permute(0, 2, 1, 3)
    return (out, lse.permute(0, 2, 1)) if return_lse else out


def _apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding (as in WanAttnProcessor)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class RingKernelAttnProcessor(WanAttnProcessor):
    """WanAttnProcessor whose sharded self-attention runs diffusers' templated ring / Ulysses attention over
    PyTorch's CPU flash kernel (it returns the log-sum-exp that ring attention merges with). Cross-attention
    (full text on every rank) and unsharded calls take the stock path."""

    def __call__(self, attn: WanAttention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or self._parallel_config is None or attn.add_k_proj is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query, key = _apply_rotary_emb(query, *rotary_emb), _apply_rotary_emb(key, *rotary_emb)
        out = _templated_context_parallel_attention(
            query, key, value, attention_mask, 0.0, False, None, False, False,
            forward_op=_cpu_flash_forward_op, backward_op=None, _parallel_config=self._parallel_config)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def gather_sequence(x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """All-gather shards of possibly different lengths along `dim` (rank order), on any backend."""
    sizes = gather_size_by_comm(x.shape[dim], group)
    longest = max(sizes)
    if x.shape[dim] < longest:
        pad_shape = list(x.shape)
        pad_shape[dim] = longest - x.shape[dim]
        x = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat([part.narrow(dim, 0, n) for part, n in zip(parts, sizes, strict=True)], dim=dim)


class SequenceGatherHook(ModelHook):
    """Gathers a module's (B, tokens, C) output along the tokens across the context-parallel group."""

    def __init__(self, group: dist.ProcessGroup):
        super().__init__()
        self.group = group

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        return gather_sequence(output, 1, self.group)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def enable_sequence_parallel(transformers: Iterable[torch.nn.Module], mode: str = "ulysses") -> ParallelConfig:
    """Shard every given WanVACETransformer3DModel over the default process group (call on every rank, after
    `torch.distributed.init_process_group`). Returns the shared diffusers ParallelConfig."""
    if not dist.is_initialized():
        raise RuntimeError("enable_sequence_parallel needs torch.distributed initialised on every rank")
    models = list(transformers)
    if not models:
        raise ValueError("no transformer to shard")
    world, rank = dist.get_world_size(), dist.get_rank()
    cp = context_parallel_config(mode, world)
    device = _device_of(models[0])
    mesh = dist.device_mesh.init_device_mesh(device.type, cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names)
    config = ParallelConfig(context_parallel_config=cp)
    config.setup(rank, world, device, mesh=mesh)
    for model in models:
        if getattr(model, "_parallel_config", None) is not None:
            raise RuntimeError(f"{type(model).__name__} is already sharded")
        if mode == "ring" and device.type == "cuda":
            model.set_attention_backend(CUDA_RING_BACKEND)
        for module in model.modules():
            if not isinstance(module, WanAttention):
                continue
            if mode == "ring" and device.type == "cpu":
                module.set_processor(RingKernelAttnProcessor())
            module.processor._parallel_config = config
        apply_context_parallel(model, cp, VACE_CP_PLAN)
        registry = HookRegistry.check_if_exists_or_initialize(model.get_submodule(GATHER_MODULE))
        registry.register_hook(SequenceGatherHook(cp._flattened_mesh.get_group()), "sequence_gather")
        model._parallel_config = config
    return config


class SequenceShards:
    """What a step cache needs from a sharded transformer: this rank's slice of the full token sequence (the
    one the CP plan hands the first blocks) and agreement across the group, so every rank decides alike."""

    def __init__(self, config: ContextParallelConfig):
        self.mesh = config._flattened_mesh
        self.group = self.mesh.get_group()

    def local(self, tokens: torch.Tensor) -> torch.Tensor:
        """This rank's shard of (B, tokens, C), split exactly as VACE_CP_PLAN splits `blocks.0`'s input."""
        return PartitionAnythingSharder.shard_anything(tokens, _SPLIT_TOKENS.split_dim, self.mesh)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over the group (every rank gets the same tensor)."""
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM, group=self.group)
        return values

    def all(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when every rank passes True (one all-reduce)."""
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self.group)
        return bool(value.item())


def sequence_shards(transformer: torch.nn.Module) -> SequenceShards | None:
    """The SequenceShards of a transformer sharded by enable_sequence_parallel; None when it is not sharded."""
    config = getattr(transformer, "_parallel_config", None)
    return None if config is None else SequenceShards(config.context_parallel_config)
