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


@dataclass(frozen=True)
class LoraEntry(HubEntry):
    """A published step-distillation LoRA: one file (or folder) of a Hub repository and its recipe."""

    path: str
    recipe: str

    def fetch_hint(self) -> str:
        what = f'--include "{self.path}"' if self.path.endswith("/*") else self.path
        return f"huggingface-cli download {self.repo_id} {what} --local-dir <LORA_DIR>   (on a connected machine)"


DISTILL_LORAS: dict[str, LoraEntry] = {
    e.name: e
    for e in (
        LoraEntry("lightx2v-t2v-14b-rank32", "Kijai/WanVideo_comfy",
                  "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank32.safetensors",
                  "Wan2.1 14B (VACE-14B): 4 steps, guidance 1, shift 5, scale 1"),
        LoraEntry("lightx2v-t2v-14b-rank64", "lightx2v/Wan2.1-T2V-14B-StepDistill-CfgDistill-Lightx2v",
                  "loras/Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors",
                  "Wan2.1 14B (VACE-14B): 4 steps, guidance 1, shift 5, scale 1"),
        LoraEntry("causvid-t2v-14b-rank32", "Kijai/WanVideo_comfy", "Wan21_CausVid_14B_T2V_lora_rank32.safetensors",
                  "Wan2.1 14B (VACE-14B): guidance 1, 4-8 steps (community usage; no official recipe)"),
        LoraEntry("wan22-lightning-t2v-a14b", "lightx2v/Wan2.2-Lightning",
                  "Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/*",
                  "Wan2.2 A14B: 4 steps, guidance 1, shift 5; high_noise_model on expert high_noise, "
                  "low_noise_model on low_noise"),
    )
}
