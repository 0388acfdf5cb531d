"""A VACE-aware step cache: skip whole transformer evaluations and reuse the cached residual.

diffusers' own FirstBlockCache / MagCache hooks treat `transformer.blocks` as the whole stack, but
WanVACETransformer3DModel runs its `vace_blocks` before `blocks` and adds each VACE hint *between*
blocks in its forward. On a skipped step those hooks re-add the fresh hints on top of a cached
residual that already contains them, and they still evaluate every VACE block. These hooks (built on
diffusers' hook registry and cache contexts, so cond/uncond keep separate state) fix both:

- the decision is taken in the hook of `vace_blocks[0]`, the first block a VACE forward reaches;
- on a skipped step every VACE block returns a zero hint without computing, every main block passes
  its input through, and the `norm_out` hook adds the residual (final hidden state minus the
  patch-embedded input) cached at the last computed step;
- on a computed step every block runs its own forward on the same inputs, so the output is
  bit-identical to the unhooked model.

Decision rules (the published ones):
- "magcache": accumulated magnitude-ratio error (MagCache, arXiv:2506.09045) from per-model
  calibrated ratios; no computation is needed to decide.
- "fbcache": relative L1 change of the first main block's residual against the last computed step
  (First Block Cache, ParaAttention). Needs no calibration; costs one block per skipped step.
- "calibrate": never skip; record the per-step magnitude ratios MagCache needs.

Under sequence parallelism (pipelines.parallel) these hooks sit outside the context-parallel split hooks,
so `vace_blocks[0]` and `blocks[0]` receive the full token sequence while every block computes on this
rank's shard. The hooks therefore keep everything per shard: `x0` and the cached residual are this rank's
slice, a skipped `blocks[0]` hands on the slice the split would have made, and the First Block Cache
change is the group-wide one (its sums all-reduced, so it equals the unsharded value). Every decision is
then agreed by an all-reduce (skip only if every rank skips), so no rank can leave the others waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, CacheContext, HookRegistry, ModelHook, StateManager

from vace.pipelines.parallel.sequence import SequenceShards, sequence_shards

HOOK_NAME = "vace_step_cache"
METHODS = ("magcache", "fbcache", "calibrate")


@dataclass(frozen=True)
class CachePolicy:
    """How a step cache decides to skip. `mag_ratios` maps a context ("cond"/"uncond") to one ratio per step."""

    method: str
    threshold: float = 0.0
    max_skip_steps: int | None = None
    warmup_steps: int = 1
    mag_ratios: dict[str, list[float]] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown step-cache method {self.method!r}; known: {', '.join(METHODS)}")
        if self.method == "magcache" and not self.mag_ratios:
            raise ValueError("magcache needs calibrated magnitude ratios (run `vace calibrate`)")


@dataclass
class CacheStats:
    """Counts of full transformer evaluations per context, plus calibration ratios when calibrating."""

    computed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_steps: dict[str, list[int]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)

    @property
    def evaluations(self) -> int:
        return sum(self.computed.values())

    @property
    def evaluations_skipped(self) -> int:
        return sum(self.skipped.values())


class _StepState(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step = -1
        self.owner: int | None = None
        self.skip = False
        self.x0: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.probe_residual: torch.Tensor | None = None
        self.head_output: torch.Tensor | None = None
        self.probing = False
        self.acc_ratio = 1.0
        self.acc_err = 0.0
        self.consecutive_skips = 0

    def reset_accumulators(self) -> None:
        self.acc_ratio, self.acc_err = 1.0, 0.0


def _ratios_for(ratios: list[float], num_steps: int) -> list[float]:
    """Nearest-neighbour resampling of a ratio curve to num_steps (as MagCache does)."""
    if len(ratios) == num_steps:
        return list(ratios)
    if num_steps == 1:
        return [ratios[-1]]
    scale = (len(ratios) - 1) / (num_steps - 1)
    return [ratios[int(round(i * scale))] for i in range(num_steps)]


class _Shared:
    """What every hook of one installed cache shares: policy, per-context state, counters."""

    def __init__(self, policy: CachePolicy, num_steps: int):
        self.policy = policy
        self.num_steps = num_steps
        self.states = StateManager(_StepState)
        self.stats = CacheStats()
        self.ratios = {k: _ratios_for(v, num_steps) for k, v in (policy.mag_ratios or {}).items()}
        self.zero: dict[tuple, torch.Tensor] = {}

    def state(self) -> _StepState:
        if self.states._context is None:
            self.states.set_context(CacheContext(name="cond"))
        return self.states.get_state()

    @property
    def context(self) -> str:
        return self.states.context.name

    def zero_like(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in self.zero:
            self.zero[key] = torch.zeros((1, 1, 1), dtype=x.dtype, device=x.device)
        return self.zero[key]

    def count(self, skipped: bool) -> None:
        ctx, state = self.context, self.state()
        bucket = self.stats.skipped if skipped else self.stats.computed
        bucket[ctx] = bucket.get(ctx, 0) + 1
        if skipped:
            self.stats.skipped_steps.setdefault(ctx, []).append(state.step)


class _Hook(ModelHook):
    _is_stateful = True

    def __init__(self, shared: _Shared):
        super().__init__()
        self.shared = shared
        self.state_manager = shared.states  # found by diffusers' cache_context

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


class _HeadVaceHook(_Hook):
    """On vace_blocks[0]: advance the step, decide compute/skip, and run the block (or not)."""

    def __init__(self, shared: _Shared, owner: int, head_block: torch.nn.Module, shards: SequenceShards | None):
        super().__init__(shared)
        self.owner = owner
        self.head_block = head_block
        self.shards = shards

    def _local(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.shards is None else self.shards.local(tokens)

    def new_forward(self, module: torch.nn.Module, hidden_states, encoder_hidden_states, control_hidden_states,
                    temb, rotary_emb):
        shared, state = self.shared, self.shared.state()
        state.step += 1
        expert_changed = state.owner is not None and state.owner != self.owner
        state.owner = self.owner
        state.head_output = None
        if expert_changed:  # a residual from the other expert says nothing about this one
            state.residual = state.probe_residual = None
            state.reset_accumulators()
        method = shared.policy.method
        local = self._local(hidden_states)
        if method == "fbcache":
            state.probing = True
            try:
                head_output = self.head_block(hidden_states, encoder_hidden_states, temb, rotary_emb)
            finally:
                state.probing = False
            skip = self._fbcache_skip(state, head_output - local)
            if not skip:
                state.head_output = head_output
        elif method == "magcache":
            skip = self._magcache_skip(state, hidden_states.device)
        else:
            skip = False
        state.skip = skip
        state.consecutive_skips = state.consecutive_skips + 1 if skip else 0
        shared.count(skip)
        if skip:
            return shared.zero_like(hidden_states), control_hidden_states
        state.x0 = local
        return self.fn_ref.original_forward(hidden_states, encoder_hidden_states, control_hidden_states, temb,
                                            rotary_emb)

    def _can_skip(self, state: _StepState) -> bool:
        policy = self.shared.policy
        if state.residual is None or state.step < policy.warmup_steps:
            return False
        return policy.max_skip_steps is None or state.consecutive_skips < policy.max_skip_steps

    def _agreed(self, skip: bool, device: torch.device) -> bool:
        """Skip only if every rank of a sequence-parallel group skips (the local decision without one)."""
        return skip if self.shards is None else self.shards.all(skip, device)

    def _relative_change(self, probe: torch.Tensor, previous: torch.Tensor) -> float:
        """mean |probe - previous| / mean |previous| over the whole (possibly sharded) token sequence."""
        if self.shards is None:
            return ((probe - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)).item()
        sums = torch.stack([(probe - previous).abs().sum(dtype=torch.float64), previous.abs().sum(dtype=torch.float64)])
        difference, magnitude = self.shards.sum(sums).tolist()
        return difference / max(magnitude, 1e-300)

    def _fbcache_skip(self, state: _StepState, probe: torch.Tensor) -> bool:
        previous = state.probe_residual
        skip = (previous is not None and self._can_skip(state)
                and self._relative_change(probe, previous) < self.shared.policy.threshold)
        skip = self._agreed(skip, probe.device)
        if not skip:
            state.probe_residual = probe
        return skip

    def _magcache_skip(self, state: _StepState, device: torch.device) -> bool:
        policy = self.shared.policy
        ratios = self.shared.ratios.get(self.shared.context) or self.shared.ratios.get("cond") or []
        acc_ratio = state.acc_ratio * (ratios[state.step] if state.step < len(ratios) else 1.0)
        acc_err = state.acc_err + abs(1.0 - acc_ratio)
        if self._agreed(self._can_skip(state) and acc_err <= policy.threshold, device):
            state.acc_ratio, state.acc_err = acc_ratio, acc_err
            return True
        state.reset_accumulators()
        return False


class _VaceHook(_Hook):
    """On vace_blocks[1:]: a zero hint and no computation on a skipped step."""

    def new_forward(self, module: torch.nn.Module, hidden_states, encoder_hidden_states, control_hidden_states,
                    temb, rotary_emb):
        if self.shared.state().skip:
            return self.shared.zero_like(hidden_states), control_hidden_states
        return self.fn_ref.original_forward(hidden_states, encoder_hidden_states, control_hidden_states, temb,
                                            rotary_emb)


class _BlockHook(_Hook):
    """On blocks[*]: pass the input through on a skipped step; blocks[0] reuses the probe's output.
    Under sequence parallelism blocks[0] gets the full sequence and passes on this rank's shard."""

    def __init__(self, shared: _Shared, shards: SequenceShards | None = None):
        super().__init__(shared)
        self.shards = shards

    def new_forward(self, module: torch.nn.Module, hidden_states, *args, **kwargs):
        state = self.shared.state()
        if state.probing:
            return self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        if state.skip:
            return hidden_states if self.shards is None else self.shards.local(hidden_states)
        if state.head_output is not None:
            output, state.head_output = state.head_output, None
            return output
        return self.fn_ref.original_forward(hidden_states, *args, **kwargs)


class _NormOutHook(_Hook):
    """On norm_out: add the cached residual on a skipped step; store it (and calibrate) on a computed one."""

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor):
        shared, state = self.shared, self.shared.state()
        if state.skip:
            return self.fn_ref.original_forward(hidden_states + state.residual.to(hidden_states))
        residual = (hidden_states - state.x0.to(hidden_states)).to(state.x0.dtype)
        if shared.policy.method == "calibrate":
            shared.stats.ratios.setdefault(shared.context, []).append(_magnitude_ratio(residual, state.residual))
        state.residual = residual
        return self.fn_ref.original_forward(hidden_states)


def _magnitude_ratio(current: torch.Tensor, previous: torch.Tensor | None) -> float:
    """Mean over tokens of |r_t| / |r_{t-1}| (MagCache's calibration statistic); 1.0 without a previous."""
    if previous is None or previous.shape != current.shape:
        return 1.0
    ratio = torch.linalg.norm(current.float(), dim=-1) / torch.linalg.norm(previous.float(), dim=-1).clamp_min(1e-8)
    return float(ratio.mean().item())


class StepCache:
    """A step cache installed on one or two VACE transformers (the A14B experts share one state)."""

    def __init__(self, transformers: list[Any], policy: CachePolicy, num_steps: int):
        self.transformers = list(transformers)
        self.policy = policy
        self.shared = _Shared(policy, num_steps)
        self._registries: list[HookRegistry] = []
        for owner, transformer in enumerate(self.transformers):
            self._install(transformer, owner)

    @property
    def stats(self) -> CacheStats:
        return self.shared.stats

    def _install(self, transformer: Any, owner: int) -> None:
        if 0 not in transformer.config.vace_layers or list(transformer.config.vace_layers) != sorted(
                transformer.config.vace_layers):
            raise ValueError("the step cache expects sorted vace_layers starting at 0")
        shards = sequence_shards(transformer)
        if shards is not None and self.policy.method == "calibrate":
            raise ValueError("calibrate in one process: magnitude ratios of a sequence shard are not the model's")
        self._register(transformer.vace_blocks[0],
                       _HeadVaceHook(self.shared, owner, transformer.blocks[0], shards))
        for block in list(transformer.vace_blocks)[1:]:
            self._register(block, _VaceHook(self.shared))
        for index, block in enumerate(transformer.blocks):
            self._register(block, _BlockHook(self.shared, shards if index == 0 else None))
        self._register(transformer.norm_out, _NormOutHook(self.shared))
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()

    def _register(self, module: torch.nn.Module, hook: ModelHook) -> None:
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(hook, HOOK_NAME)
        self._registries.append(registry)

    def remove(self) -> None:
        """Take every hook off again (the model is exactly as before) and drop the cached tensors."""
        for registry in self._registries:
            registry.remove_hook(HOOK_NAME, recurse=False)
        self._registries.clear()
        for transformer in self.transformers:
            HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
        self.shared.states.reset()
        self.shared.zero.clear()
