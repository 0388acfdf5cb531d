"""Media references in requests: this server's own file/output URLs become storage refs (a path in the data dir,
or an s3:// URL); public URLs are checked against the fetch policy; anything else (a local path) is refused."""

from __future__ import annotations

import re
import urllib.parse

from vace.pipelines.job.request import RequestError
from vace.pipelines.media.fetch import FetchPolicy, check_url
from vace.server.service.errors import InvalidInput
from vace.server.service.files import FileStorage, utc
from vace.server.service.tenants import EVERYONE, Tenant
from vace.server.storage import output_key

_FILE_PATH = re.compile(r"^(?:/[\w.-]+)*/files/(?P<id>[a-z0-9]+)(?:/download)?$")  # /v1 or not
_OUTPUT_PATH = re.compile(r"^/outputs/(?P<name>[\w.-]+)$")


def parse_url(url: str, field_name: str) -> urllib.parse.ParseResult:
    try:
        parsed = urllib.parse.urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise InvalidInput.of(field_name, f"malformed URL {url!r} ({exc})") from exc
    return parsed


class MediaUrls:
    def __init__(self, public_url: str, own_netlocs: set[str], files: FileStorage, fetch_policy: FetchPolicy):
        self.public_url = public_url
        self.own_netlocs = own_netlocs
        self.files = files
        self.fetch_policy = fetch_policy

    def url(self, path: str) -> str:
        """Absolute URL on this server's public base URL."""
        return self.public_url.rstrip("/") + "/" + path.lstrip("/")

    def output_rel(self, name: str) -> str | None:
        """The storage key of the output `name` (None when there is no such output)."""
        rel = output_key(name)
        return rel if rel is not None and self.files.storage.size(rel) is not None else None

    def _local_ref(self, parsed: urllib.parse.ParseResult, field_name: str, tenant: Tenant) -> str | None:
        """A URL of this server's own upload (the tenant's) or output -> the object's storage ref (None if not)."""
        if m := _FILE_PATH.match(parsed.path):
            record = self.files.store.get_file(m["id"])
            if record and not tenant.sees(record.owner):
                return None
            if record and record.expired(self.files.clock()):
                raise InvalidInput.of(field_name, f"uploaded file {record.id} expired at {utc(record.expires_at)} "
                                                  "(--file-retention-hours); upload it again")
            return self.files.ref(record) if record else None
        if m := _OUTPUT_PATH.match(parsed.path):
            rel = self.output_rel(m["name"])
            return self.files.storage.ref(rel) if rel else None
        return None

    def resolve_media(self, ref: str, field_name: str, tenant: Tenant = EVERYONE) -> str:
        """Accept data: URIs, this server's file (the tenant's own) and output URLs and public http(s) URLs;
        refuse local paths."""
        if not isinstance(ref, str) or not ref:
            raise InvalidInput.of(field_name, "expected a URL, a data: URI or an uploaded file")
        if ref.startswith("data:"):
            return ref
        if ref.startswith(("http://", "https://")):
            parsed = parse_url(ref, field_name)
            if parsed.netloc in self.own_netlocs:
                local = self._local_ref(parsed, field_name, tenant)
                if local:
                    return local
                raise InvalidInput.of(field_name, f"{ref} is not a file on this server")
            self.check_public_url(ref, field_name)
            return ref
        raise InvalidInput.of(field_name, "expected an http(s) URL, a data: URI or an uploaded file URL")

    def check_public_url(self, url: str, field_name: str) -> None:
        parse_url(url, field_name)  # check_url lets urllib's ValueError (e.g. "http://[::1") through
        try:
            check_url(url, self.fetch_policy, field_name)
        except RequestError as exc:
            raise InvalidInput.of(field_name, exc.message) from exc
