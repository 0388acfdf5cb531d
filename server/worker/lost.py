"""What becomes of the jobs a lost worker held: one function for every executor and for the server's start."""

from __future__ import annotations

import logging

from vace.server.store import Store

log = logging.getLogger("vace.supervisor")


def settle_lost(store: Store, cause: str, owner: str | None = None, expired_before: float | None = None) -> None:
    """The jobs of a lost worker (a dead process, a lost Ray actor or node, an expired lease, a server that stopped):
    canceled if its cancel was asked for, else requeued once if it had not started denoising, else failed naming
    `cause` (Store.lose_held); logged."""
    lost = store.lose_held(cause, owner=owner, expired_before=expired_before)
    if lost.requeued:
        log.warning("%s: requeued %s (not yet denoising)", cause, ", ".join(lost.requeued))
    if lost.canceled:
        log.warning("%s: canceled %s (its cancel was asked for)", cause, ", ".join(lost.canceled))
    if lost.failed:
        log.error("%s: failed %s", cause, ", ".join(lost.failed))
