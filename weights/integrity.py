"""Size + sha256 manifests of a weights directory, for moving weights into an air-gapped site."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

MANIFEST_NAME = "vace-manifest.json"
_CHUNK = 8 * 1024 * 1024
FileKey = tuple[str, int, int]  # (resolved path, size, mtime_ns): a file rewritten in place gets a new key


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_key(path: str | Path) -> FileKey:
    """The key a per-file cache keeps a result under: the resolved path, size and mtime_ns."""
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def cached_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process: a file rewritten in place gets a
    new mtime and is hashed again."""
    return _sha256_of(file_key(path))


@functools.lru_cache(maxsize=4096)
def _sha256_of(key: FileKey) -> str:
    return sha256_file(Path(key[0]))


def _files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and ".cache" not in p.relative_to(root).parts
    )


def write_manifest(root: str | Path) -> Path:
    """Record size and sha256 of every file under root into root/vace-manifest.json."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"weights directory not found: {root}")
    entries = {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in _files(root)
    }
    out = root / MANIFEST_NAME
    out.write_text(json.dumps({"version": 1, "files": entries}, indent=2, sort_keys=True) + "\n")
    return out


def verify_manifest(root: str | Path) -> list[str]:
    """Check every file against the manifest; return one line per problem (empty list = all good)."""
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        return [f"{manifest_path}: no manifest (create one with `vace weights manifest {root}`)"]
    recorded = json.loads(manifest_path.read_text())["files"]
    problems = []
    for rel, expected in sorted(recorded.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            problems.append(f"{rel}: size {size} != recorded {expected['size']}")
        elif sha256_file(path) != expected["sha256"]:
            problems.append(f"{rel}: sha256 mismatch (file is corrupted or was changed)")
    for path in _files(root):
        rel = path.relative_to(root).as_posix()
        if rel not in recorded:
            problems.append(f"{rel}: not in the manifest")
    return problems
