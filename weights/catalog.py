"""The supported checkpoints: layout each must have, and where a connected machine fetches it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
                  "Wan2.2 A14B: 4 steps, guidance 1, shift 5; as turbo: --distill-lora high_noise_model "
                  "--distill-lora-low-noise low_noise_model"),
    )
}
# --- frame interpolators and prompt extenders ---------------------------------------------------------------
# Interpolators live in <interpolators root>/<name>/ (root: --interpolators, else `interpolators/` beside the
# model directory); prompt extenders are whole model folders (--prompt-extender / --prompt-extender-vl, else
# `prompt-extender/` / `prompt-extender-vl/` beside the model directory).


@dataclass(frozen=True)
class Helper:
    """A helper model folder a stage of the render loads (never downloaded at run time)."""

    name: str
    files: tuple[str, ...]  # what the folder must hold
    description: str
    source: str  # how a connected machine gets it; <DIR> is the folder
    server_option: str
    weights: str = ""  # a glob the weight files match (sharded checkpoints), when not among `files`

    def missing(self, folder: Path) -> list[str]:
        absent = [f for f in self.files if not (folder / f).is_file()]
        if self.weights and not any(folder.glob(self.weights)):
            absent.append(self.weights)
        return absent

    def describe_missing(self, folder: Path) -> str | None:
        """None when the folder is complete, else a message naming the folder, the option and the fetch command."""
        missing = self.missing(folder)
        if not missing:
            return None
        return (f"{self.description} has no weights: expected {', '.join(missing)} in {folder} (start the server "
                f"with {self.server_option}). Get it on a connected machine: "
                f"{self.source.replace('<DIR>', str(folder))}")


INTERPOLATORS: dict[str, Helper] = {
    h.name: h
    for h in (
        Helper(
            name="rife", files=("flownet.pkl",),
            description="frame interpolator 'rife' (Practical-RIFE 4.25 / 4.26 IFNet)",
            source="download the v4.25 model archive linked under 'Trained Model' in "
            "https://github.com/hzwer/Practical-RIFE, unzip it and copy train_log/flownet.pkl into <DIR>/",
            server_option="--interpolators ROOT (ROOT/rife/flownet.pkl)",
        ),
        Helper(
            name="film", files=("film_net_fp32.pt",),
            description="frame interpolator 'film' (FILM, TorchScript export of google-research/frame-interpolation)",
            source="download https://github.com/dajes/frame-interpolation-pytorch/releases/download/v1.0.0/"
            "film_net_fp32.pt into <DIR>/",
            server_option="--interpolators ROOT (ROOT/film/film_net_fp32.pt)",
        ),
    )
}

PROMPT_EXTENDERS: dict[str, Helper] = {
    h.name: h
    for h in (
        Helper(
            name="prompt-extender", files=("config.json", "tokenizer_config.json"),
            description="prompt expansion (a Qwen2.5-Instruct model, transformers)",
            source="huggingface-cli download Qwen/Qwen2.5-7B-Instruct --local-dir <DIR>   (or Qwen2.5-3B-Instruct)",
            server_option="--prompt-extender DIR", weights="*.safetensors",
        ),
        Helper(
            name="prompt-extender-vl", files=("config.json", "tokenizer_config.json", "preprocessor_config.json"),
            description="prompt expansion for requests with images (a Qwen2.5-VL-Instruct model, transformers)",
            source="huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct --local-dir <DIR>   "
            "(or Qwen2.5-VL-3B-Instruct)",
            server_option="--prompt-extender-vl DIR", weights="*.safetensors",
        ),
    )
}


@dataclass(frozen=True)
class HelperDirs:
    """Where the interpolators and prompt extenders are configured (None = the folder beside the model)."""

    interpolators: Path | None = None
    prompt_extender: Path | None = None
    prompt_extender_vl: Path | None = None

    def interpolators_root(self, model_dir: str | Path | None) -> Path:
        return self.interpolators or _beside(model_dir, "interpolators")

    def interpolator_dir(self, name: str, model_dir: str | Path | None) -> Path:
        return self.interpolators_root(model_dir) / name

    def extender_dir(self, name: str, model_dir: str | Path | None) -> Path:
        configured = self.prompt_extender_vl if name == "prompt-extender-vl" else self.prompt_extender
        return configured or _beside(model_dir, name)

    def extender_for(self, has_images: bool, model_dir: str | Path | None) -> tuple[str, Path]:
        """(entry name, folder) of the extender a request uses: the vision one for a request with images, the text
        one otherwise; either when only it is installed (a vision model also rewrites text alone)."""
        vl = ("prompt-extender-vl", self.extender_dir("prompt-extender-vl", model_dir))
        text = ("prompt-extender", self.extender_dir("prompt-extender", model_dir))
        order = (vl, text) if has_images else (text, vl)
        return next((c for c in order if not PROMPT_EXTENDERS[c[0]].missing(c[1])), text)


def _beside(model_dir: str | Path | None, name: str) -> Path:
    base = Path(model_dir).resolve().parent if model_dir is not None else Path.home() / ".cache" / "vace-server"
    return base / name
