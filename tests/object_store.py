"""A real S3-compatible server for the tests: moto's standalone server on 127.0.0.1, one fresh bucket per test.

The server speaks S3's HTTP API (signatures, multipart uploads, ranged GETs), so s3fs and the server talk to it
exactly as to a bucket elsewhere; only the endpoint URL and a throwaway key differ.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from tests.system_deps import need_python

KEY, SECRET = "vace-test-key", "vace-test-secret"


@dataclass
class ObjectStoreServer:
    server: Any
    endpoint: str

    @classmethod
    def start(cls) -> ObjectStoreServer:
        moto_server = need_python("moto.server", "moto[server]")
        need_python("s3fs")
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return cls(server, f"http://{host}:{port}")

    @property
    def options(self) -> dict[str, Any]:
        """--storage-options for this server (s3fs keyword arguments)."""
        return {"endpoint_url": self.endpoint, "key": KEY, "secret": SECRET}

    def new_bucket(self) -> str:
        """A fresh empty bucket; the --storage URL of a prefix inside it."""
        import s3fs  # installed by start()

        name = f"vace-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(**self.options).mkdir(name)
        return f"s3://{name}/replica-data"

    def stop(self) -> None:
        self.server.stop()
