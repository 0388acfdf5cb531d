"""The acceleration presets: one table of levels, and the hosted-API names that map onto them.

Each level names a step cache (see pipelines.step_cache) in two forms: MagCache, used when the model
has calibrated magnitude ratios beside its weights (`vace calibrate`), and First Block Cache, the
fallback that needs no calibration. GPU levers (regional compilation, attention backend, FP8) are
model-wide and chosen when the model is loaded (pipelines.acceleration), not per job.

Sources for the figures (see README, Performance):
- MagCache (arXiv:2506.09045): its Wan2.1 scripts default to threshold 0.12, K=2, retention 0.2;
  the paper's fast setting (threshold 0.24, K=6, also LightX2V's default) gives about 2.8x on
  Wan2.1-14B T2V 720p at PSNR 24.4 against the uncached video (TeaCache: 2.0x at PSNR 17.4).
- First Block Cache: diffusers' default threshold is 0.05; measured on Wan2.1-T2V-14B 0.06 gives
  1.85x and 0.09 is no longer usable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vace.pipelines.job.loras import LoraSpec
from vace.pipelines.job.request import SAMPLERS, GenerationRequest, RequestError


@dataclass(frozen=True)
class Preset:
    """One acceleration level. `mag_*` apply with calibrated ratios, `fbc_*` without."""

    name: str
    description: str
    step_cache: bool
    mag_threshold: float = 0.0
    mag_max_skip_steps: int = 0
    fbc_threshold: float = 0.0
    fbc_max_skip_steps: int = 0
    retention_ratio: float = 0.2
    distill: bool = False  # runs the configured step-distillation LoRA with its own recipe (DistillRecipe)

    def warmup_steps(self, num_steps: int) -> int:
        """Steps computed unconditionally at the start (MagCache's retention ratio); at least one."""
        return max(1, int(self.retention_ratio * num_steps + 0.5))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("none", "no step cache: every step runs the full transformer", step_cache=False),
        Preset("low", "MagCache 0.12 / K=2 (calibrated) or First Block Cache 0.05 / K=2",
               step_cache=True, mag_threshold=0.12, mag_max_skip_steps=2,
               fbc_threshold=0.05, fbc_max_skip_steps=2),
        Preset("regular", "MagCache 0.24 / K=6 (calibrated) or First Block Cache 0.07 / K=4",
               step_cache=True, mag_threshold=0.24, mag_max_skip_steps=6,
               fbc_threshold=0.07, fbc_max_skip_steps=4),
        Preset("turbo", "the step-distillation LoRA (--distill-lora) with its recipe: its steps, guidance 1 "
               "(no CFG pass), its shift and sampler", step_cache=False, distill=True),
    )
}

# prunaai `speed_mode`: the lightest level keeps every step (GPU levers only), so it stays consistent.
SPEED_MODES: dict[str, str] = {
    "Lightly Juiced 🍊 (more consistent)": "none",
    "Juiced 🔥 (more speed)": "low",
    "Extra Juiced 🚀 (even more speed)": "regular",
}

# fal `acceleration`: the same names as our levels.
ACCELERATIONS: dict[str, str] = {"none": "none", "low": "low", "regular": "regular"}


def get_preset(name: str) -> Preset:
    """The preset named `name` (a level, a speed_mode string or a fal acceleration); RequestError if unknown."""
    for table in (PRESETS, SPEED_MODES, ACCELERATIONS):
        if name in table:
            return PRESETS[table[name]] if table is not PRESETS else PRESETS[name]
    raise RequestError("preset", f"unknown preset {name!r}; known: {', '.join(PRESETS)}")


# The hosted dialects' acceleration inputs an operator may map onto preset turbo (`vace serve --turbo-for`):
# prunaai's speed_mode on Replicate and fal's acceleration. WaveSpeed's documented input has no speed knob.
HOSTED_LEVELS: dict[str, dict[str, str]] = {"replicate": SPEED_MODES, "fal": ACCELERATIONS}
TurboMap = dict[str, frozenset[str]]


def parse_turbo_for(entries: list[str]) -> TurboMap:
    """`DIALECT:VALUE` entries (e.g. `fal:regular`) -> {dialect: values that run turbo}; ValueError naming the
    entry when the dialect has no such input value."""
    found: dict[str, set[str]] = {}
    for entry in entries:
        dialect, sep, value = entry.partition(":")
        levels = HOSTED_LEVELS.get(dialect.strip().lower())
        if not sep or levels is None:
            raise ValueError(f"{entry!r}: give DIALECT:VALUE with DIALECT one of {', '.join(HOSTED_LEVELS)}")
        if value not in levels:
            raise ValueError(f"{entry!r}: {dialect} has no value {value!r}; it has {', '.join(map(repr, levels))}")
        found.setdefault(dialect.strip().lower(), set()).add(value)
    return {dialect: frozenset(values) for dialect, values in found.items()}


def _hosted(dialect: str, field_name: str, value: str, turbo: TurboMap | None) -> str:
    if value in (turbo or {}).get(dialect, ()):
        return "turbo"
    try:
        return HOSTED_LEVELS[dialect][value]
    except KeyError:
        raise RequestError(field_name, f"must be one of {', '.join(map(repr, HOSTED_LEVELS[dialect]))}") from None


def preset_for_speed_mode(speed_mode: str, turbo: TurboMap | None = None) -> str:
    """prunaai speed_mode -> preset name (turbo where the operator mapped it); RequestError naming `speed_mode`
    if unknown."""
    return _hosted("replicate", "speed_mode", speed_mode, turbo)


def preset_for_acceleration(acceleration: str, turbo: TurboMap | None = None) -> str:
    """fal acceleration (none|low|regular) -> preset name (turbo where the operator mapped it); RequestError
    naming `acceleration` if unknown."""
    return _hosted("fal", "acceleration", acceleration, turbo)


def resolve_preset(request: GenerationRequest) -> GenerationRequest:
    """The request with its preset given by level name (a speed_mode string or fal acceleration resolved);
    RequestError naming `preset` if unknown."""
    return dataclasses.replace(request, preset=get_preset(request.preset).name)


# `vace serve` and `vace generate` refuse a low-noise distill given alone (nothing would run it) with this
DISTILL_PAIR_NEEDED = ("--distill-lora-low-noise is the low-noise half of a distill pair and is used only with "
                       "--distill-lora (the high-noise half): give --distill-lora too")


@dataclass(frozen=True)
class DistillRecipe:
    """A step-distillation LoRA and the recipe it was distilled for, which preset turbo runs. The defaults are
    LightX2V's 4-step Wan recipe: timesteps 1000/937/833/625 at shift 5 (what dpm++ and unipc pick on the
    flow-sigma schedule), no classifier-free guidance.

    Two-expert models (Wan2.2 A14B) may take a distill pair, as published for them: `lora` on the high-noise
    expert and `low_noise_lora` on the low-noise one. Without `low_noise_lora`, `lora` goes on both; a
    one-transformer model always takes `lora` alone."""

    lora: str  # PATH_OR_NAME[:SCALE], as `--lora` reads it
    steps: int = 4
    shift: float = 5.0
    sampler: str = "dpm++"
    low_noise_lora: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 100:
            raise ValueError(f"distill steps must be between 1 and 100, got {self.steps}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"distill sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        self.specs(two_experts=True)

    def specs(self, two_experts: bool) -> list[LoraSpec]:
        """The distill LoRA(s) a model with one or two experts runs."""
        if not (two_experts and self.low_noise_lora):
            return [LoraSpec.parse(self.lora)]
        return [dataclasses.replace(LoraSpec.parse(self.lora), expert="high_noise"),
                dataclasses.replace(LoraSpec.parse(self.low_noise_lora), expert="low_noise")]


def check_distill(request: GenerationRequest, recipe: DistillRecipe | None) -> None:
    """RequestError naming `preset` when the request asks for turbo and no distill LoRA is configured."""
    if get_preset(request.preset).distill and recipe is None:
        raise RequestError("preset", "preset turbo needs a step-distillation LoRA, and none is configured here "
                                     "(start the server, or vace generate, with --distill-lora PATH_OR_NAME)")


def apply_distill(request: GenerationRequest, recipe: DistillRecipe | None,
                  two_experts: bool = False) -> GenerationRequest:
    """A turbo request rewritten to the distill's recipe: its LoRA(s) first (a pair on a two-expert model where
    one is configured), its steps, shift and sampler, guidance 1 on every expert; any other preset unchanged."""
    check_distill(request, recipe)
    if not get_preset(request.preset).distill or recipe is None:
        return request
    distill = [spec.to_dict() for spec in recipe.specs(two_experts)]
    return dataclasses.replace(request, steps=recipe.steps, guidance=1.0, guidance_2=1.0, shift=recipe.shift,
                               sampler=recipe.sampler, loras=[*distill, *request.loras])
