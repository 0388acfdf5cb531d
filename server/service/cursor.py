"""Opaque list cursors: a direction (a = newer than, b = older than) and a row's sequence number."""

from __future__ import annotations

import base64

from vace.server.service.errors import InvalidInput


def encode_cursor(kind: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int | None, int | None]:
    """(before_seq, after_seq) of a cursor; InvalidInput for anything this server did not hand out."""
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor.encode() + b"==").decode().partition(":")
        if kind not in ("a", "b"):
            raise ValueError(kind)
        seq = int(value)
        if abs(seq) >= 2**63:  # not a database integer: the query would raise (HTTP 500)
            raise ValueError(value)
    except ValueError as exc:
        raise InvalidInput.of("cursor", "malformed cursor") from exc
    return (seq, None) if kind == "b" else (None, seq)
