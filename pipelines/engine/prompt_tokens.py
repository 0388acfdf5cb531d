"""The prompt length limit: the text encoder (UMT5) reads TEXT_TOKENS (512) tokens, end-of-sequence included, and
diffusers silently drops the rest, so a longer prompt is refused at submit, counted with the served model's own
tokenizer. A character bound comes first, so a huge prompt costs no tokenizing."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from vace.pipelines.engine.prompt_cache import TEXT_TOKENS
from vace.pipelines.job.request import RequestError

# Far above real text (English averages about 4 characters a UMT5 token); only whitespace runs, which the
# tokenizer collapses, could fit more characters into 512 tokens.
MAX_PROMPT_CHARS = 32 * TEXT_TOKENS


class PromptLimit:
    """Counts tokens as the pipeline's tokenizer does (add_special_tokens: the closing </s> counts)."""

    def __init__(self, tokenizer_dir: Path, max_tokens: int = TEXT_TOKENS):
        self.tokenizer_dir = Path(tokenizer_dir)
        self.max_tokens = max_tokens
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                path = self.tokenizer_dir / "tokenizer.json"
                if path.is_file():
                    from tokenizers import Tokenizer  # light: no torch

                    tokenizer = Tokenizer.from_file(str(path))
                    self._tokenizer = lambda text: len(tokenizer.encode(text, add_special_tokens=True).ids)
                else:
                    from transformers import AutoTokenizer  # heavy: only for a sentencepiece-only checkpoint

                    slow = AutoTokenizer.from_pretrained(str(self.tokenizer_dir), local_files_only=True)
                    self._tokenizer = lambda text: len(slow(text, add_special_tokens=True).input_ids)
        return self._tokenizer

    def count(self, text: str) -> int:
        return self._load()(text)

    def check(self, text: str, field_name: str) -> None:
        """RequestError naming `field_name` when `text` is longer than the text encoder reads."""
        if len(text) > MAX_PROMPT_CHARS:
            raise RequestError(field_name, f"is {len(text)} characters, over the {MAX_PROMPT_CHARS} character "
                                           f"limit (the text encoder reads at most {self.max_tokens} tokens)")
        tokens = self.count(text)
        if tokens > self.max_tokens:
            raise RequestError(field_name, f"is {tokens} tokens long; the text encoder (UMT5) reads at most "
                                           f"{self.max_tokens} tokens, end of text included: shorten it")


@functools.lru_cache(maxsize=16)
def prompt_limit_for(model_dir: str) -> PromptLimit:
    """The one PromptLimit of a served model directory (its tokenizer/ subfolder)."""
    return PromptLimit(Path(model_dir) / "tokenizer")
