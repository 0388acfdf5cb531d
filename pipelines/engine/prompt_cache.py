"""An LRU cache of text-encoder outputs, so a repeated prompt (or the default negative prompt) is encoded once."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class PromptEmbeddingCache:
    """Maps one prompt string to its embedding tensor; evicts the least recently used beyond `capacity`."""

    def __init__(self, encode: Callable[[str], Any], capacity: int = 32):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._encode = encode
        self.capacity = capacity
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> Any:
        with self._lock:
            if text in self._entries:
                self._entries.move_to_end(text)
                self.hits += 1
                return self._entries[text]
        embedding = self._encode(text)
        with self._lock:
            self.misses += 1
            self._entries[text] = embedding
            self._entries.move_to_end(text)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return embedding

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, text: str) -> bool:
        return text in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


TEXT_TOKENS = 512  # Wan's text length (WanVACEPipeline.__call__'s default; encode_prompt's own is 226)
_BY_PIPELINE: weakref.WeakKeyDictionary[Any, PromptEmbeddingCache] = weakref.WeakKeyDictionary()


def prompt_cache_for(pipe: Any, capacity: int = 32) -> PromptEmbeddingCache:
    """The one cache of a loaded pipeline (shared by every Renderer on it): text -> prompt_embeds."""
    cache = _BY_PIPELINE.get(pipe)
    if cache is None:
        # A weak reference: the cache is the WeakKeyDictionary's value, and a strong one from its encoder
        # would keep the pipeline (every weight) alive after the model is released.
        pipe_ref = weakref.ref(pipe)

        def encode(text: str) -> Any:
            pipe = pipe_ref()
            embeds, _ = pipe.encode_prompt(prompt=text, do_classifier_free_guidance=False,
                                           max_sequence_length=TEXT_TOKENS, device=pipe._execution_device)
            return embeds

        cache = _BY_PIPELINE[pipe] = PromptEmbeddingCache(encode, capacity)
    return cache
