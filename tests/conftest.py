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
def tiny_model(tiny_model_dir: Path):
    from weights.loader import load_pipeline

    return load_pipeline(tiny_model_dir, device="cpu")


@pytest.fixture()
def renderer(tiny_model, tmp_path: Path):
    from pipelines.render import Renderer

    return Renderer(tiny_model, work_dir=tmp_path / "work")
