"""What a new prediction's input must pass before anything is stored: prompts within the text encoder's tokens,
and every media input sniffed by its bytes and decoded far enough to be an image or video of a usable size.

URL fetches (and host lookups) run on a small pool of their own, awaited from the event loop, so slow hosts
hold only that pool: never the shared threads every other request needs."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from vace.pipelines.engine.prompt_tokens import prompt_limit_for
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.media.fetch import FetchPolicy, materialize
from vace.pipelines.media.sniff import IMAGE, VIDEO, inspect_media
from vace.server.storage import Storage

T = TypeVar("T")
FETCH_WORKERS = 4
MEDIA_KINDS = {"video": (VIDEO,), "mask": (IMAGE, VIDEO), "first_frame": (IMAGE,), "last_frame": (IMAGE,)}


class Intake:
    """One per server process; `close()` on shutdown."""

    def __init__(self, model_dirs: dict[str, str], fetch_policy: FetchPolicy, storage: Storage,
                 workers: int = FETCH_WORKERS):
        self.model_dirs = model_dirs
        self.storage = storage  # this server's uploads and outputs (a bucket's are downloaded to be checked)
        self.fetch_policy = dataclasses.replace(fetch_policy, allow_local_paths=True)  # our own, resolved refs
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="vace-fetch")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the fetch pool, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def check_prompts(self, request: GenerationRequest, model: str) -> None:
        """RequestError naming the field when a prompt is longer than the served model's text encoder reads."""
        directory = self.model_dirs.get(model)
        if directory is None:
            return  # an unknown model is the dialect's error to name
        limit = prompt_limit_for(directory)
        for name in ("prompt", "negative_prompt"):
            text = getattr(request, name)
            if isinstance(text, str) and text:
                limit.check(text, name)

    def check_media(self, request: GenerationRequest) -> None:
        """Fetch (or read) every media input and check it is the kind its field takes, of a usable size;
        RequestError naming the field otherwise. `request` holds resolved references (service.urls)."""
        inputs = [(name, getattr(request, name), kinds) for name, kinds in MEDIA_KINDS.items()]
        inputs += [(f"reference_images[{i}]", ref, (IMAGE,)) for i, ref in enumerate(request.reference_images)]
        with tempfile.TemporaryDirectory(prefix="vace-intake-") as tmp:
            for name, ref, kinds in inputs:
                if ref:
                    readable = self.storage.readable(ref, Path(tmp) / "stored", name)
                    inspect_media(materialize(readable, name, Path(tmp), self.fetch_policy), name, kinds)
