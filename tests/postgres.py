"""A real PostgreSQL server for the tests: initdb in a temp dir, listening on a Unix socket only, torn down after.

Debian's `postgresql` package provides the server (installed by `need_debian` when missing). initdb refuses to
run as root, so as root the cluster is created and run as the `postgres` user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.system_deps import need_debian, need_python


def _bin_dir() -> Path:
    """The newest installed server's bin dir (/usr/lib/postgresql/NN/bin), installing the package if needed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        need_debian("postgresql", "pg_ctlcluster")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent


@dataclass
class PostgresServer:
    """One throwaway cluster; `new_database()` gives each test its own empty database."""

    bin_dir: Path
    root: Path
    user: str | None  # the OS user that runs the server (None: this process's user)

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        kwargs = {"user": self.user, "group": self.user} if self.user else {}
        return subprocess.run([str(self.bin_dir / args[0]), *args[1:]], capture_output=True, text=True, check=True,
                              timeout=120, cwd=self.root, **kwargs)

    @classmethod
    def start(cls) -> PostgresServer:
        need_python("psycopg", "psycopg[binary]")
        bin_dir = _bin_dir()
        user = "postgres" if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="vace-pg-"))
        server = cls(bin_dir, root, user)
        server.socket_dir.mkdir()
        if user:
            for path in (root, server.socket_dir):
                shutil.chown(path, user, user)
        server._run("initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        # No TCP listener at all (listen_addresses=''): clients reach it through the socket in the temp dir.
        options = (f"-c listen_addresses='' -k {server.socket_dir} -c fsync=off -c full_page_writes=off "
                   "-c max_connections=300")
        try:
            server._run("pg_ctl", "start", "-D", str(root / "data"), "-w", "-t", "60", "-l", str(root / "server.log"),
                        "-o", options)
        except subprocess.CalledProcessError as exc:
            log = (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log[-2000:]}") from exc
        return server

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}"

    def new_database(self) -> str:
        """A fresh empty database; its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._run("createdb", "-h", str(self.socket_dir), "-U", "postgres", name)
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-D", str(self.root / "data"), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
