"""Real components the tests start (PostgreSQL, Chromium, Node, Ray): install what is missing, or skip naming it.

A test that needs a system package calls `need_debian(package, binary)` / `need_python(module, pip_name)`. As
root the missing piece is installed (apt-get / pip); without root the test is skipped with the package's name.
Under CI (`CI=true`) such a skip is a failure instead, so CI always runs these tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_apt_updated = False
INSTALL_LOCK = Path(tempfile.gettempdir()) / "vace-tests-install.lock"


def missing(what: str, reason: str) -> None:
    message = f"needs {what}: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI must run this test)")
    pytest.skip(message)


@contextlib.contextmanager
def _installing() -> Iterator[None]:
    """One install at a time across the suite's pytest processes (apt and pip each take their own lock, or none)."""
    with open(INSTALL_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def need_debian(package: str, binary: str) -> str:
    """The path of `binary`, installing Debian's `package` with apt-get when it is missing and we are root."""
    global _apt_updated
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0:
        missing(f"the Debian package {package}", "not installed and not root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _installing():
        if found := shutil.which(binary):  # the other pytest process installed it meanwhile
            return found
        if not _apt_updated:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            _apt_updated = True
        result = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env=env,
                                capture_output=True, text=True, timeout=1200)
    found = shutil.which(binary)
    if not found:
        missing(f"the Debian package {package}", f"apt-get install failed: {result.stderr.strip()[-300:]}")
    return found


def need_python(module: str, pip_name: str | None = None):
    """Import `module`, installing `pip_name` (default: the module's name) with pip when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    name = pip_name or module
    with _installing():
        importlib.invalidate_caches()
        if importlib.util.find_spec(module) is not None:  # the other pytest process installed it meanwhile
            return importlib.import_module(module)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", name], capture_output=True,
                                text=True, timeout=1200)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"the Python package {name}", f"pip install failed: {result.stderr.strip()[-300:]}")
