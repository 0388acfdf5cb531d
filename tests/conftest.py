"""Shared fixtures: the tiny model bundle (built once per session) and a loaded renderer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide VACE_TINY_DIR so every test (and every server subprocess) shares one tiny bundle."""
    home = Path(os.environ.get("VACE_TEST_TINY_DIR") or tmp_path_factory.mktemp("tiny-models"))
    os.environ["VACE_TINY_DIR"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_home: Path) -> Path:
    from weights.tiny import resolve_model

    return resolve_model("tiny")


@pytest.fixture(scope="session")
def tiny_a14b_dir(tiny_home: Path) -> Path:
    from weights.tiny import resolve_model

    return resolve_model("tiny-a14b")


@pytest.fixture(scope="session")
def calibrated_tiny_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model with MagCache ratios from calibrate() stored beside it (10 steps, 64x64, 17
    frames), so presets use MagCache on it."""
    import shutil

    from pipelines.calibrate import calibrate, calibration_path, save_calibration
    from weights.loader import load_pipeline

    root = tmp_path_factory.mktemp("calibrated") / "tiny"
    shutil.copytree(tiny_model_dir, root)
    record = calibrate(load_pipeline(root, device="cpu"), steps=10, width=64, height=64, num_frames=17, seed=0,
                       work_dir=tmp_path_factory.mktemp("calwork"))
    save_calibration(record, calibration_path(root))
    return root


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from weights.loader import load_pipeline

    return load_pipeline(tiny_model_dir, device="cpu")


@pytest.fixture()
def renderer(tiny_model, tmp_path: Path):
    from pipelines.render import Renderer

    return Renderer(tiny_model, work_dir=tmp_path / "work")
