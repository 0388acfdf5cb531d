"""The supported checkpoints: layout each must have, and where a connected machine fetches it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HubEntry:
    """A model directory a connected machine fetches from the Hugging Face Hub."""

    name: str
    repo_id: str

    def fetch_hint(self) -> str:
        return f"huggingface-cli download {self.repo_id} --local-dir <DIR>   (on a connected machine)"


@dataclass(frozen=True)
class Checkpoint(HubEntry):
    """One supported model in diffusers layout."""

    components: dict[str, str]
    two_experts: bool = False
    boundary_ratio: float | None = None
    description: str = ""
    config: dict = field(default_factory=dict)


_COMMON = {
    "text_encoder": "UMT5EncoderModel",
    "tokenizer": "T5Tokenizer",
    "vae": "AutoencoderKLWan",
    "scheduler": "UniPCMultistepScheduler",
    "transformer": "WanVACETransformer3DModel",
}

CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            name="Wan2.1-VACE-14B",
            repo_id="Wan-AI/Wan2.1-VACE-14B-diffusers",
            components=dict(_COMMON),
            description="Wan2.1 VACE 14B: 40 blocks + 8 VACE blocks, width 5120",
        ),
        Checkpoint(
            name="Wan2.1-VACE-1.3B",
            repo_id="Wan-AI/Wan2.1-VACE-1.3B-diffusers",
            components=dict(_COMMON),
            description="Wan2.1 VACE 1.3B: 30 blocks + 15 VACE blocks, width 1536",
        ),
        Checkpoint(
            name="Wan2.2-VACE-Fun-A14B",
            repo_id="linoyts/Wan2.2-VACE-Fun-14B-diffusers",
            components={**_COMMON, "transformer_2": "WanVACETransformer3DModel"},
            two_experts=True,
            boundary_ratio=0.875,
            description="Wan2.2 VACE-Fun A14B: high-noise `transformer` + low-noise `transformer_2` experts "
            "(original weights: alibaba-pai/Wan2.2-VACE-Fun-A14B)",
        ),
    )
}

# Classes accepted per component: the real checkpoints ship the fast or slow T5 tokenizer.
EQUIVALENT_CLASSES = {"T5Tokenizer": {"T5Tokenizer", "T5TokenizerFast", "AutoTokenizer"}}


def required_components(two_experts: bool) -> dict[str, str]:
    """Subfolders (and classes) a directory must hold for a single- or two-expert model."""
    return dict(CHECKPOINTS["Wan2.2-VACE-Fun-A14B" if two_experts else "Wan2.1-VACE-14B"].components)


@dataclass(frozen=True)
class Auxiliary(HubEntry):
    """A helper model (not a VACE checkpoint) the server loads from a local directory."""

    description: str
    server_option: str


AUXILIARY: dict[str, Auxiliary] = {
    a.name: a
    for a in (
        Auxiliary(
            name="nsfw-image-detection",
            repo_id="Falconsai/nsfw_image_detection",
            description="safety checker: ViTForImageClassification (normal / nsfw) run on sampled output frames",
            server_option="--safety-checker DIR (or VACE_SAFETY_CHECKER=DIR)",
        ),
    )
}
