"""Annotator weights: the manifest of local directories annotators load from, and tiny random-weight writers.

Layout: <annotators root>/<dirname>/..., where the root is --annotators-dir, else the `annotators/`
folder beside the model directory (<weights root>/annotators), else ~/.cache/vace-server/annotators.
Nothing is ever downloaded at run time; `source` says how a connected machine gets each directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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


def annotators_root(model_dir: str | Path | None = None, configured: str | Path | None = None) -> Path:
    """The configured root (--annotators-dir), else <model dir>/../annotators, else
    ~/.cache/vace-server/annotators."""
    if configured:
        return Path(configured)
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
            f"(--annotators-dir names another annotators root). Get them on a connected machine: "
            f"{entry.source.replace('<ROOT>', str(root))}")
