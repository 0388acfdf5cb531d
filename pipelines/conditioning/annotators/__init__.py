"""Annotators: turn source frames into VACE control frames (depth, pose, flow, scribble, ...).

Every annotator has one interface: `annotator(frames, progress=None) -> frames`, with frames (F, H, W, 3)
float32 in [0, 1] in and out (same count and size), and `progress(done, total)` called per frame.
Model-based annotators load from a local weights directory (weights.annotators manifest), never from
the network; `require(name, env)` raises RequestError naming the directory and how to get the weights.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from vace.pipelines.conditioning.annotators.base import Annotator, ProgressFn, from_uint8, to_uint8  # noqa: F401
from vace.pipelines.conditioning.annotators.depth import DepthAnythingV2
from vace.pipelines.conditioning.annotators.dwpose import DWPose
from vace.pipelines.conditioning.annotators.flow import FarnebackFlow, RaftFlow, torchvision_problem
from vace.pipelines.conditioning.annotators.scribble import CannyScribble, LineArt
from vace.pipelines.conditioning.annotators.simple import GrayAnnotator
from vace.pipelines.conditioning.annotators.tracking import Sam2Tracker
from vace.pipelines.job.request import RequestError
from vace.weights.annotators import ANNOTATOR_WEIGHTS, annotators_root, describe_missing


@dataclass
class AnnotatorEnv:
    """Where annotator weights live and which device they run on."""

    root: Path | None = None  # None: weights.annotators.annotators_root()
    device: str | None = None  # None: cuda when available, else cpu
    progress: ProgressFn | None = None
    preloaded: dict[str, object] = field(default_factory=dict)  # name -> a ready annotator used as is

    @classmethod
    def for_model(cls, model_dir: str | Path | None, device: str | None = None,
                  configured: str | Path | None = None) -> AnnotatorEnv:
        """The weights of the model's jobs: `configured` (--annotators-dir), else annotators/ beside it."""
        return cls(root=annotators_root(model_dir, configured), device=device)

    def resolved_root(self) -> Path:
        return self.root if self.root is not None else annotators_root()

    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch  # torch loads only where tensors are used (the API process never needs it)

        return "cuda" if torch.cuda.is_available() else "cpu"


# Weight-free annotators (no directory) and which weights entry each model-based one needs.
WEIGHT_FREE = ("gray", "farneback", "canny")
WEIGHTS_OF = {"depth": "depth-anything-v2", "pose": "dwpose", "face": "dwpose", "raft": "raft",
              "lineart": "lineart", "sam2": "sam2"}


def require(name: str, env: AnnotatorEnv) -> None:
    """Raise RequestError (field `task_options`) when annotator `name` cannot run here."""
    if name in WEIGHT_FREE or name in env.preloaded:
        return

    if name == "raft":
        problem = torchvision_problem()
        if problem:
            raise RequestError("task_options", problem)
    problem = describe_missing(WEIGHTS_OF[name], env.resolved_root())
    if problem:
        raise RequestError("task_options", problem)


_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str, str], object] = {}


def load(name: str, env: AnnotatorEnv):
    """The annotator `name`, loaded once per (weights directory, device) and kept for later requests."""
    if name in env.preloaded:
        return env.preloaded[name]
    if name == "face":  # the same DWPose networks as `pose`, drawing the face points only
        return load("pose", env).restricted(body=False)
    require(name, env)
    root, device = env.resolved_root(), env.resolved_device()
    key = (name, str(root), device)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = _build(name, root, device)
        return _LOADED[key]


def _build(name: str, root: Path, device: str):
    folder = root / ANNOTATOR_WEIGHTS[WEIGHTS_OF[name]].dirname if name in WEIGHTS_OF else None
    if name == "gray":
        return GrayAnnotator()
    if name == "farneback":
        return FarnebackFlow()
    if name == "canny":
        return CannyScribble()
    if name == "depth":
        return DepthAnythingV2(folder, device)
    if name == "pose":
        return DWPose(folder, device)
    if name == "raft":
        return RaftFlow(folder, device)
    if name == "lineart":
        return LineArt(folder, device)
    if name == "sam2":
        return Sam2Tracker(folder, device)
    raise KeyError(name)
