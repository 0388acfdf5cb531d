"""Installing the clients users run (npm packages, replicate 2.x) once per machine, outside the test venv."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.system_deps import need_debian

REPO = Path(__file__).resolve().parents[1]
JS_DIR = REPO / "tests" / "js"
# 1.x is the test extra's pin; 2.x lives in its own directory with its dependencies (distro: the one the test venv
# lacks, at a range the client accepts).
REPLICATE_2X = ("replicate==2.0.0b4", "distro>=1.7,<2")


def cache_root() -> Path:
    return Path(os.environ.get("VACE_TEST_CLIENTS_DIR", Path.home() / ".cache" / "vace-server" / "test-clients"))


def _installed_once(name: str, key: str, install) -> Path:
    """cache_root()/name-key, made by install(staging_dir) into a staging folder and renamed into place."""
    target = cache_root() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (target / ".done").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".staging-{name}-"))
    try:
        install(staging)
        (staging / ".done").write_text(key)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def js_clients() -> tuple[str, Path]:
    """(node binary, a directory with tests/js/clients.mjs and its npm packages installed)."""
    node = need_debian("nodejs", "node")
    npm = need_debian("npm", "npm")
    manifest = (JS_DIR / "package.json").read_text()

    def install(folder: Path) -> None:
        shutil.copy(JS_DIR / "package.json", folder / "package.json")
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder,
                                capture_output=True, text=True, timeout=600)
        if result.returncode:
            pytest.fail(f"npm install failed: {result.stderr[-500:]}")

    folder = _installed_once("js", manifest, install)
    shutil.copy(JS_DIR / "clients.mjs", folder / "clients.mjs")  # the script may change without the packages
    return node, folder


def replicate_2x() -> Path:
    """A directory to put first on PYTHONPATH so that `import replicate` is the 2.x client."""

    def install(folder: Path) -> None:
        # With its dependencies, so the client runs alone from this folder; those the suite also uses at the versions
        # of constraints.txt (less its replicate 1.x pin).
        pins = folder.parent / f"{folder.name}-constraints.txt"
        pins.write_text("".join(line for line in (REPO / "constraints.txt").read_text().splitlines(keepends=True)
                                if not line.startswith("replicate==")))
        try:
            result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(folder), "-c",
                                     str(pins), *REPLICATE_2X], capture_output=True, text=True, timeout=600)
        finally:
            pins.unlink()
        if result.returncode:
            pytest.fail(f"pip install {' '.join(REPLICATE_2X)} failed: {result.stderr[-500:]}")

    return _installed_once("replicate2", " ".join(REPLICATE_2X) + " with-deps, constrained", install)
