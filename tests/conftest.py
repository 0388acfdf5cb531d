"""Shared fixtures: the tiny model bundle (built once per session) and a loaded renderer."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP thread per process: two pytest processes and the servers and workers they start share the cores, and
# OpenMP's threads spin while they wait, so a pool per process slowed the suite's renders several-fold. Set before
# torch loads here, and inherited by every server the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _loopback_only(host: object) -> None:
    """Tests talk to loopback only: refuse resolving real names and reaching non-loopback addresses."""
    if host is None or host in ("localhost", b"localhost"):
        return
    name = host.decode() if isinstance(host, bytes) else str(host)
    try:
        address = ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        raise socket.gaierror(socket.EAI_NONAME, f"tests resolve no external names ({name})") from None
    if not (address.is_loopback or address.is_unspecified):
        raise OSError(f"tests reach loopback only, not {name}")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        _loopback_only(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _loopback_only(address[0])
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the whole session (tests/postgres.py)."""
    from tests.postgres import PostgresServer

    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def object_store():
    """A real S3-compatible server (moto's) on loopback for the whole session (tests/object_store.py)."""
    from tests.object_store import ObjectStoreServer

    server = ObjectStoreServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, then (the same test again) a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide VACE_TINY_DIR so every test (and every server subprocess) shares one tiny bundle."""
    home = Path(os.environ.get("VACE_TEST_TINY_DIR") or tmp_path_factory.mktemp("tiny-models"))
    os.environ["VACE_TINY_DIR"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_home: Path) -> Path:
    from vace.pipelines.fixtures.tiny_model import resolve_model

    return resolve_model("tiny")


@pytest.fixture(scope="session")
def tiny_a14b_dir(tiny_home: Path) -> Path:
    from vace.pipelines.fixtures.tiny_model import resolve_model

    return resolve_model("tiny-a14b")


@pytest.fixture(scope="session")
def calibrated_tiny_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model with MagCache ratios from calibrate() stored beside it (10 steps, 64x64, 17
    frames), so presets use MagCache on it."""
    import shutil

    from vace.pipelines.acceleration.calibration import calibration_path, save_calibration
    from vace.pipelines.bench.calibrate import calibrate
    from vace.pipelines.engine.loading import load_pipeline

    root = tmp_path_factory.mktemp("calibrated") / "tiny"
    shutil.copytree(tiny_model_dir, root)
    record = calibrate(load_pipeline(root, device="cpu"), steps=10, width=64, height=64, num_frames=17, seed=0,
                       work_dir=tmp_path_factory.mktemp("calwork"))
    save_calibration(record, calibration_path(root))
    return root


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from vace.pipelines.engine.loading import load_pipeline

    return load_pipeline(tiny_model_dir, device="cpu")


@pytest.fixture()
def renderer(tiny_model, tmp_path: Path):
    from vace.pipelines.engine.render import Renderer

    return Renderer(tiny_model, work_dir=tmp_path / "work")
