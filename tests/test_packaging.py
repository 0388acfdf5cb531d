"""The distribution installs one import package, `vace`, and the console script works from a wheel install."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra installs it there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_vace_and_the_cli_runs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, timeout=600, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("vace_server-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"vace"}, top
    packages = {str(Path(n).parent) for n in names if n.endswith("__init__.py")}
    folders = {"vace/" + str(p.parent.relative_to(ROOT)) for f in ("server", "pipelines", "weights")
               for p in (ROOT / f).rglob("__init__.py")}
    assert folders <= packages, sorted(folders - packages)  # a subpackage missing from pyproject's list
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "vace = vace.server.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # An isolated environment that sees this interpreter's dependencies but not this checkout's editable install:
    # its site-packages folders are listed in a .pth file, which puts them on sys.path without running the .pth
    # files inside them (the editable install's finder among them).
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    env_site = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                               "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(env_site, "dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=600, capture_output=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import vace.server.cli as c; "
            "print(c.__file__); sys.argv = ['vace', '--help']; c.main()")
    result = subprocess.run([str(env_dir / "bin" / "python"), "-c", code, str(target)], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(target))
    assert "serve" in result.stdout and "generate" in result.stdout
    for generic in ("server", "pipelines", "weights"):
        assert not (target / generic).exists()


def test_the_cuda_image_copies_what_its_install_reads():
    """Docker cannot run here, so check the Dockerfile against pyproject: every mapped folder, the readme and
    constraints.txt are copied, and the default extras exist."""
    text = (ROOT / "Dockerfile.cuda").read_text()
    copied = {src for line in text.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    assert folders | {project["project"]["readme"], "pyproject.toml", "constraints.txt"} <= copied
    assert "-c constraints.txt" in text
    [extras] = re.findall(r"^ARG EXTRAS=(\S+)$", text, re.MULTILINE)
    assert set(extras.split(",")) <= set(project["project"]["optional-dependencies"])
    assert "tiny" in extras.split(",")  # the image's default command serves the tiny model
    assert re.search(r'^CMD \["--model", "tiny"\]$', text, re.MULTILINE)
