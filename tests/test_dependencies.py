"""Declared dependencies: constraints.txt (what CI installs) sits inside every bound pyproject.toml declares."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def pins() -> dict[str, Version]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(name): Version(version) for name, version in pairs}


def test_constraints_pin_every_declared_dependency_inside_its_bounds():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in ("test", "tiny"):
        declared += [Requirement(r) for r in project["optional-dependencies"][extra] if not r.startswith("vace-")]
    pinned = pins()
    for req in declared:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is declared but not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} is outside {req}"


def test_runtime_dependencies_name_the_real_floors():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {canonicalize_name(Requirement(r).name): Requirement(r) for r in project["dependencies"]}
    assert not runtime["diffusers"].specifier.contains("0.40.0")  # CacheContext arrived in diffusers 0.41
    assert runtime["diffusers"].specifier.contains("0.41.0")
    assert "torch" in runtime and "pydantic" in runtime and str(runtime["torch"].specifier)
    assert "onnx" not in runtime and "imageio" not in runtime  # test-model writing only / unused
    assert "onnx" in " ".join(project["optional-dependencies"]["tiny"])
