"""The NSFW safety checker: a local image classifier run on frames sampled from a rendered video.

The classifier is a transformers `ViTForImageClassification` in the layout of the public
`Falconsai/nsfw_image_detection` checkpoint (config.json with id2label {0: normal, 1: nsfw},
model.safetensors, preprocessor_config.json). It is loaded from a local directory only.

Where the classifier comes from is the server's `--safety-checker` (a directory; `tiny` is resolved to
the tiny random one by the server). When it is not installed the operator's policy
(`--safety-unavailable`: refuse | unchecked) decides between refusing requests that ask for a check and
serving them marked unchecked. A video is never reported as checked when it
was not: `SafetyVerdict.checked` is False then and `nsfw` is None.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

POLICIES = ("refuse", "unchecked")
DEFAULT_POLICY = "refuse"
REPO_ID = "Falconsai/nsfw_image_detection"
FETCH_HINT = f"huggingface-cli download {REPO_ID} --local-dir <DIR>   (on a connected machine)"
DEFAULT_SAMPLES = 4
DEFAULT_THRESHOLD = 0.5


class SafetyUnavailable(RuntimeError):
    """A safety check was asked for but no classifier is installed (and the policy is `refuse`)."""


@dataclass
class SafetyVerdict:
    """The outcome for one video. `checked` False means no classifier looked at it (nsfw is None)."""

    checked: bool
    nsfw: bool | None
    scores: list[float] = field(default_factory=list)  # nsfw probability per sampled frame
    frames: list[int] = field(default_factory=list)  # indices of the sampled frames
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def unchecked(cls, note: str) -> SafetyVerdict:
        return cls(checked=False, nsfw=None, note=note)


@dataclass(frozen=True)
class SafetyConfig:
    """The classifier directory the server is configured with (None = none) and the policy without one."""

    checker: Path | None = None
    policy: str = DEFAULT_POLICY

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"the safety policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")


def missing_reason(path: Path | None) -> str | None:
    """Why the classifier at `path` cannot be used (None = it looks installed)."""
    if path is None:
        return ("no safety checker is installed (start the server with --safety-checker DIR; get one with: "
                f"{FETCH_HINT})")
    if not (path / "config.json").is_file():
        return f"safety checker directory {path} has no config.json"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        return f"safety checker directory {path} has no weight files"
    return None


def availability(config: SafetyConfig) -> tuple[bool, str]:
    """(installed, reason-if-not) for the configured classifier, without loading it."""
    reason = missing_reason(config.checker)
    return reason is None, reason or ""


def refusal(config: SafetyConfig) -> str | None:
    """Why a request that asks for a safety check must be refused now (None = serve it): the classifier
    is missing and the operator's policy is `refuse`."""
    ok, reason = availability(config)
    if ok or config.policy != "refuse":
        return None
    return f"{reason}; this server refuses requests that ask for a safety check it cannot run"


def sample_indices(num_frames: int, samples: int = DEFAULT_SAMPLES) -> list[int]:
    """Evenly spread frame indices, always including the first and the last frame."""
    if num_frames <= 0:
        return []
    if num_frames <= samples:
        return list(range(num_frames))
    return sorted({round(i * (num_frames - 1) / (samples - 1)) for i in range(samples)})


class SafetyChecker:
    """A loaded classifier: `check(frames)` -> SafetyVerdict."""

    def __init__(self, path: str | Path, device: str = "cpu", threshold: float = DEFAULT_THRESHOLD):
        import torch  # torch loads only where tensors are used (the API process never needs it)
        from transformers import ViTForImageClassification  # transformers loads only where a model is built

        self.path = Path(path)
        reason = missing_reason(self.path)
        if reason:
            raise SafetyUnavailable(reason)
        self.model = ViTForImageClassification.from_pretrained(str(self.path), local_files_only=True,
                                                               dtype=torch.float32).eval().to(device)
        self.device = device
        self.threshold = threshold
        labels = {int(k): str(v).lower() for k, v in self.model.config.id2label.items()}
        nsfw = [i for i, name in labels.items() if name in ("nsfw", "porn", "sexy", "hentai", "unsafe")]
        if not nsfw:
            raise SafetyUnavailable(f"{self.path}: no 'nsfw' label in id2label {labels}")
        self.nsfw_labels = nsfw
        pre = self.path / "preprocessor_config.json"
        cfg = json.loads(pre.read_text()) if pre.is_file() else {}
        size = cfg.get("size", {})
        side = int(self.model.config.image_size)
        self.size = (int(size.get("height", side)) if isinstance(size, dict) else int(size),
                     int(size.get("width", side)) if isinstance(size, dict) else int(size))
        self.mean = np.asarray(cfg.get("image_mean", [0.5, 0.5, 0.5]), np.float32)
        self.std = np.asarray(cfg.get("image_std", [0.5, 0.5, 0.5]), np.float32)

    def preprocess(self, frames: np.ndarray) -> Any:
        """(N, H, W, 3) float [0, 1] or uint8 -> normalised (N, 3, h, w) tensor at the classifier size."""
        import torch  # torch loads only where tensors are used (the API process never needs it)
        import torch.nn.functional as F  # torch loads only where tensors are used (the API process never needs it)

        x = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
        t = F.interpolate(t, size=self.size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.from_numpy(self.mean).view(1, 3, 1, 1)
        std = torch.from_numpy(self.std).view(1, 3, 1, 1)
        return ((t - mean) / std).to(self.device)

    def scores(self, frames: np.ndarray) -> list[float]:
        """nsfw probability of each given frame."""
        import torch  # torch loads only where tensors are used (the API process never needs it)

        with torch.inference_mode():
            logits = self.model(pixel_values=self.preprocess(frames)).logits
            probs = logits.float().softmax(-1)[:, self.nsfw_labels].sum(-1)
        return [round(float(p), 6) for p in probs]

    def check(self, frames: np.ndarray, samples: int = DEFAULT_SAMPLES) -> SafetyVerdict:
        idx = sample_indices(len(frames), samples)
        scores = self.scores(frames[idx]) if idx else []
        return SafetyVerdict(checked=True, nsfw=any(s >= self.threshold for s in scores), scores=scores,
                             frames=idx, note=f"{len(idx)} frames checked by {self.path.name}")


_LOADED: dict[str, SafetyChecker] = {}


def check_video_frames(frames: np.ndarray | None, config: SafetyConfig, device: str = "cpu") -> SafetyVerdict:
    """Run the configured classifier on sampled frames; unchecked (with the reason) when it is missing."""
    path = config.checker
    reason = missing_reason(path)
    if reason:
        return SafetyVerdict.unchecked(reason)
    if frames is None or len(frames) == 0:
        return SafetyVerdict.unchecked("no frames to check")
    key = f"{path}:{device}"
    if key not in _LOADED:
        _LOADED[key] = SafetyChecker(path, device=device)  # type: ignore[arg-type]
    return _LOADED[key].check(frames)
