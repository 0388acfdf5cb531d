"""Where uploads and outputs are kept: the data dir (the default) or an object store (`--storage s3://BUCKET/PREFIX`,
the `[s3]` extra), so several API replicas on one database serve the same files.

Both are addressed by the same relative keys, which the store records: `files/<id>-<name>` for an upload,
`outputs/<prediction id>.mp4` (and `<id>-frames.zip`, ...) for what a job wrote. A request names a stored object
by its `ref`: the file's path in the data dir, or the object's `s3://` URL; `rel_of` maps a ref back to its key.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from vace.pipelines.job.errors import RequestError

CHUNK = 1 << 20  # bytes per read when streaming an object
MISSING = "file not found (removed from this server's storage)"


_UPLOAD_KEY = re.compile(r"^files/(?P<id>[a-z0-9]+)-[^/]+$")


def output_key(name: str) -> str | None:
    """The key of a job's output file `name`; None for anything but a plain file name (no folder, not hidden)."""
    return f"outputs/{name}" if name and "/" not in name and not name.startswith(".") else None


def output_name(rel: str) -> str | None:
    """The output file name a key holds (None when it is not an output's key)."""
    folder, _, name = rel.partition("/")
    return name if folder == "outputs" and output_key(name) else None


def upload_key(file_id: str, name: str) -> str:
    """The key of an uploaded file (`name` is already safe: one path segment)."""
    return f"files/{file_id}-{name}"


def upload_id(rel: str) -> str | None:
    """The id of the upload a key holds (None when it is not an upload's key)."""
    return m["id"] if (m := _UPLOAD_KEY.match(rel)) else None


class StorageError(RuntimeError):
    """The object store cannot be reached or used (bad credentials, no such bucket, s3fs missing)."""


class Storage(ABC):
    """Objects under relative keys; see the module docstring."""

    @property
    def local_root(self) -> Path | None:
        """The directory holding the objects as files (None for an object store)."""
        return None

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError when the storage cannot be used (called once at start-up)."""

    @abstractmethod
    def ref(self, rel: str) -> str:
        """How a request names the object at `rel`."""

    @abstractmethod
    def rel_of(self, ref: str) -> str | None:
        """The key of an object this storage holds, from its ref (None when `ref` is not one of ours)."""

    @abstractmethod
    def put_bytes(self, rel: str, data: bytes) -> None:
        """Write an object whole (readers never see a partial one)."""

    @abstractmethod
    def put_file(self, rel: str, source: Path) -> None:
        """Store the local file `source` as `rel`; `source` is gone afterwards (moved or uploaded)."""

    @abstractmethod
    def size(self, rel: str) -> int | None:
        """The object's size in bytes; None when there is no such object."""

    @abstractmethod
    def open(self, rel: str, size: int | None = None) -> BinaryIO:
        """The object for reading (FileNotFoundError when missing); `size`, when the caller knows it, spares an
        object store the request that would look it up."""

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Remove the object if it exists."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """The keys that start with `prefix` within its folder (`outputs/<id>` -> that job's files)."""

    def read_bytes(self, rel: str) -> bytes:
        with self.open(rel) as fh:
            return fh.read()

    def chunks(self, rel: str, start: int = 0, length: int | None = None,
               size: int | None = None) -> Iterator[bytes]:
        """The object's bytes from `start`, `length` of them (all when None), in pieces of at most CHUNK; `size` as
        for open()."""
        with self.open(rel, size) as fh:
            fh.seek(start)
            left = length
            while left is None or left > 0:
                piece = fh.read(CHUNK if left is None else min(CHUNK, left))
                if not piece:
                    return
                if left is not None:
                    left -= len(piece)
                yield piece

    def readable(self, ref: str, into: Path, field: str) -> str:
        """A path a renderer can read for `ref` (the request's `field`): ours in place when local, else downloaded
        into `into`; any other reference (a URL, a data: URI) is returned as it is. RequestError naming the field
        when our object is gone (deleted, or removed by retention, after the request named it)."""
        rel = self.rel_of(ref)
        if rel is None:
            return ref
        if self.local_root is not None:
            if self.size(rel) is None:
                raise RequestError(field, MISSING)
            return ref
        into.mkdir(parents=True, exist_ok=True)
        target = into / rel.replace("/", "_")
        try:
            with open(target, "wb") as out:
                for piece in self.chunks(rel):
                    out.write(piece)
        except FileNotFoundError:
            target.unlink(missing_ok=True)
            raise RequestError(field, MISSING) from None
        return str(target)


class LocalStorage(Storage):
    """Files under the data dir (the default): refs are absolute paths, reads and writes stay on this disk."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def local_root(self) -> Path:
        return self.root

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"--data-dir {self.root}: {exc}") from exc

    def path(self, rel: str) -> Path:
        return self.root / rel

    def ref(self, rel: str) -> str:
        return str(self.path(rel).absolute())

    def rel_of(self, ref: str) -> str | None:
        if not ref or not os.path.isabs(ref):  # refs are absolute paths; URLs, data: URIs and prompts are not
            return None
        try:
            return Path(ref).resolve().relative_to(self.root.resolve()).as_posix()
        except (ValueError, OSError):
            return None

    def put_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)

    def put_file(self, rel: str, source: Path) -> None:
        target = self.path(rel)
        if Path(source).resolve() == target.resolve():
            return  # rendered in place: the fast default path copies nothing
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)

    def size(self, rel: str) -> int | None:
        path = self.path(rel)
        return path.stat().st_size if path.is_file() else None

    def open(self, rel: str, size: int | None = None) -> BinaryIO:
        return open(self.path(rel), "rb")

    def delete(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        folder, _, start = prefix.rpartition("/")
        directory = self.root / folder
        return sorted(f"{folder}/{p.name}" if folder else p.name for p in directory.glob(f"{start}*") if p.is_file()) \
            if directory.is_dir() else []


class ObjectStorage(Storage):
    """An S3 bucket (or an S3-compatible server: MinIO, Ceph, R2) through fsspec/s3fs.

    Credentials and the endpoint come the standard way (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
    ~/.aws, an instance role) or from `--storage-options` (s3fs's keyword arguments: key, secret, endpoint_url,
    client_kwargs, ...). Listings are never cached: another replica may have written a moment ago."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        try:
            import fsspec  # the [s3] extra
            import s3fs  # noqa: F401 - the [s3] extra: fsspec's s3:// implementation
        except ImportError as exc:
            raise StorageError("--storage s3://... needs s3fs: pip install 'vace-server[s3]'") from exc
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url, **{"use_listings_cache": False, **(options or {})})
        self.root = root.rstrip("/")

    def key(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def ref(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def rel_of(self, ref: str) -> str | None:
        return ref[len(self.url) + 1:] if ref and ref.startswith(self.url + "/") else None

    def check(self) -> None:
        """Reach the bucket once (at start-up), so a wrong endpoint, bucket or credential fails loudly."""
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            raise StorageError(f"--storage {self.url}: bucket {bucket!r} not found (create it first)") from None
        except Exception as exc:  # noqa: BLE001 - botocore/aiohttp raise many kinds; all mean "unusable"
            raise StorageError(f"--storage {self.url}: {type(exc).__name__}: {exc}") from exc

    def put_bytes(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self.key(rel), data)  # one PUT: the object appears whole

    def put_file(self, rel: str, source: Path) -> None:
        self.fs.put_file(str(source), self.key(rel))
        Path(source).unlink(missing_ok=True)

    def size(self, rel: str) -> int | None:
        try:
            return int(self.fs.info(self.key(rel))["size"])
        except FileNotFoundError:
            return None

    def open(self, rel: str, size: int | None = None) -> BinaryIO:
        return self.fs.open(self.key(rel), "rb", block_size=CHUNK, size=size)

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.key(rel))
        except FileNotFoundError:
            pass

    def list(self, prefix: str) -> list[str]:
        start = len(self.root) + 1
        return sorted(key[start:] for key in self.fs.glob(self.key(prefix) + "*"))
