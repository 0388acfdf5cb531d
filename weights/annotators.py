"""Annotator weights: the manifest of local directories annotators load from, and tiny random-weight writers.

Layout: <annotators root>/<dirname>/..., where the root is $VACE_ANNOTATORS_DIR, else the `annotators/`
folder beside the model directory (<weights root>/annotators), else ~/.cache/vace-server/annotators.
Nothing is ever downloaded at run time; `source` says how a connected machine gets each directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ENV_ROOT = "VACE_ANNOTATORS_DIR"


@dataclass(frozen=True)
class AnnotatorWeights:
    """One annotator's weights directory."""

    name: str
    dirname: str
    files: tuple[str, ...]
    classes: str
    source: str
    tasks: tuple[str, ...]

    def missing(self, root: Path) -> list[str]:
        folder = root / self.dirname
        return [f for f in self.files if not (folder / f).is_file()]


ANNOTATOR_WEIGHTS: dict[str, AnnotatorWeights] = {
    w.name: w
    for w in (
        AnnotatorWeights(
            name="depth-anything-v2",
            dirname="depth-anything-v2",
            files=("config.json", "model.safetensors"),
            classes="transformers DepthAnythingForDepthEstimation",
            source="huggingface-cli download depth-anything/Depth-Anything-V2-Large-hf --local-dir "
            "<ROOT>/depth-anything-v2   (or -Small-hf / -Base-hf)",
            tasks=("depth",),
        ),
        AnnotatorWeights(
            name="dwpose",
            dirname="dwpose",
            files=("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
            classes="onnxruntime: YOLOX-L person detector + DWPose RTMPose-l 133 whole-body keypoints",
            source="huggingface-cli download yzd-v/DWPose yolox_l.onnx dw-ll_ucoco_384.onnx --local-dir <ROOT>/dwpose",
            tasks=("pose", "face", "animate-anything"),
        ),
        AnnotatorWeights(
            name="raft",
            dirname="raft",
            files=("raft_large.pth",),
            classes="torchvision.models.optical_flow.raft_large (needs torchvision)",
            source="download https://download.pytorch.org/models/raft_large_C_T_V2-1bb1363a.pth "
            "(torchvision Raft_Large_Weights.C_T_V2, trained on Chairs+Things) to <ROOT>/raft/raft_large.pth",
            tasks=("flow",),
        ),
        AnnotatorWeights(
            name="lineart",
            dirname="scribble",
            files=("netG_A_latest.pth",),
            classes="informative-drawings contour generator (VACE ScribbleAnnotator, anime_style), plain torch",
            source="huggingface-cli download ali-vilab/VACE-Annotators scribble/anime_style/netG_A_latest.pth "
            "--local-dir <TMP>; copy netG_A_latest.pth to <ROOT>/scribble/",
            tasks=("scribble",),
        ),
        AnnotatorWeights(
            name="sam2",
            dirname="sam2.1-hiera",
            files=("config.json", "model.safetensors"),
            classes="transformers Sam2VideoModel (SAM 2.1 hiera)",
            source="huggingface-cli download facebook/sam2.1-hiera-large --local-dir <ROOT>/sam2.1-hiera   "
            "(or -base-plus / -small / -tiny)",
            tasks=("inpainting (mask_tracking=sam2)", "swap-anything"),
        ),
    )
}


def annotators_root(model_dir: str | Path | None = None) -> Path:
    """$VACE_ANNOTATORS_DIR, else <model dir>/../annotators, else ~/.cache/vace-server/annotators."""
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env)
    if model_dir is not None:
        return Path(model_dir).resolve().parent / "annotators"
    return Path.home() / ".cache" / "vace-server" / "annotators"


def describe_missing(name: str, root: Path) -> str | None:
    """None when the annotator's weights are in place, else a message naming the directory and the fix."""
    entry = ANNOTATOR_WEIGHTS[name]
    missing = entry.missing(root)
    if not missing:
        return None
    folder = root / entry.dirname
    return (f"annotator {name!r} has no weights: expected {', '.join(missing)} in {folder} "
            f"(set ${ENV_ROOT} to another annotators root). Get them on a connected machine: "
            f"{entry.source.replace('<ROOT>', str(root))}")


# --- tiny random-weight annotators (tests and demos) -------------------------------------------------

TINY_SEED = 0
TINY_DWPOSE = {"detector_size": 64, "pose_input": [48, 64], "resolution": 128}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def tiny_depth_config():
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(image_size=28, patch_size=14, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, patch_size=14,
                               reassemble_factors=[2, 1], neck_hidden_sizes=[8, 16], fusion_hidden_size=8,
                               head_hidden_size=8, depth_estimation_type="relative")


def write_tiny_depth(folder: Path) -> Path:
    import torch
    from transformers import DepthAnythingForDepthEstimation

    torch.manual_seed(TINY_SEED)
    model = DepthAnythingForDepthEstimation(tiny_depth_config()).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def tiny_sam2_config():
    from transformers import Sam2VideoConfig

    vision = {
        "backbone_config": {"model_type": "sam2_hiera_det_model", "hidden_size": 8,
                            "embed_dim_per_stage": [8, 16, 32, 64],
                            "num_attention_heads_per_stage": [1, 1, 1, 1], "blocks_per_stage": [1, 1, 2, 1],
                            "window_size_per_stage": [4, 4, 4, 2], "global_attention_blocks": [3],
                            "image_size": [64, 64], "window_positional_embedding_background_size": [2, 2]},
        "backbone_channel_list": [64, 32, 16, 8], "backbone_feature_sizes": [[16, 16], [8, 8], [4, 4]],
        "fpn_hidden_size": 128,
    }
    return Sam2VideoConfig(
        vision_config=vision, image_size=64,
        prompt_encoder_config={"hidden_size": 128, "image_size": 64, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2, "mlp_dim": 32,
                             "iou_head_hidden_dim": 16},
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=32,
        memory_attention_rope_feat_sizes=[4, 4], memory_encoder_hidden_size=128, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=32, num_maskmem=2,
    )


def write_tiny_sam2(folder: Path) -> Path:
    import torch
    from transformers import Sam2VideoModel

    torch.manual_seed(TINY_SEED)
    Sam2VideoModel(tiny_sam2_config()).eval().save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_tiny_lineart(folder: Path) -> Path:
    import torch
    from vace.pipelines.conditioning.annotators.scribble import ContourInference

    torch.manual_seed(TINY_SEED)
    config = {"base_channels": 4, "n_residual_blocks": 1}
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", config)
    torch.save(ContourInference(**config).state_dict(), folder / "netG_A_latest.pth")
    return folder


def write_tiny_raft(folder: Path) -> Path | None:
    """Only where torchvision imports (RAFT lives there); returns None otherwise."""
    try:
        from torchvision.models.optical_flow.raft import _raft  # noqa: F401
    except Exception:  # torchvision absent or its compiled ops do not match torch
        return None
    import torch
    from vace.pipelines.conditioning.annotators.flow import build_raft

    torch.manual_seed(TINY_SEED)
    from vace.pipelines.conditioning.annotators.flow import TINY_RAFT

    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", TINY_RAFT)
    torch.save(build_raft(TINY_RAFT).state_dict(), folder / "raft_large.pth")
    return folder


def write_tiny_dwpose(folder: Path) -> Path:
    from vace.pipelines.conditioning.annotators.dwpose import export_tiny_models

    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", TINY_DWPOSE)
    export_tiny_models(folder, TINY_DWPOSE, seed=TINY_SEED)
    return folder


TINY_WRITERS = {
    "depth-anything-v2": write_tiny_depth,
    "dwpose": write_tiny_dwpose,
    "raft": write_tiny_raft,
    "lineart": write_tiny_lineart,
    "sam2": write_tiny_sam2,
}


def write_tiny_annotators(root: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write tiny random-weight annotators in the real layout under root; returns the written folders."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    root = Path(root)
    written = {}
    for name in names or list(TINY_WRITERS):
        try:
            folder = TINY_WRITERS[name](root / ANNOTATOR_WEIGHTS[name].dirname)
        except ImportError as exc:  # an optional library is absent: that task then reports missing weights
            if names:
                raise
            import warnings

            warnings.warn(f"tiny annotator {name} not written: {exc}", stacklevel=2)
            continue
        if folder is not None:
            written[name] = folder
    return written


TINY_MARKER = "tiny-annotators.json"


def ensure_tiny_annotators(home: str | Path) -> Path:
    """home/annotators with every tiny annotator, written on first use (atomically, like the tiny models)."""
    from vace.pipelines.fixtures.tiny_model import write_once

    def write(folder: Path) -> None:
        written = write_tiny_annotators(folder)
        _write_json(folder / TINY_MARKER, {"tiny": sorted(written)})

    return write_once(Path(home) / "annotators", TINY_MARKER, write)