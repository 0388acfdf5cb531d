"""Prompt length: counted in the served model's own tokens, refused past the text encoder's 512."""

from __future__ import annotations

import pytest

from vace.pipelines.engine.prompt_cache import TEXT_TOKENS
from vace.pipelines.engine.prompt_tokens import MAX_PROMPT_CHARS, prompt_limit_for
from vace.pipelines.job.request import RequestError


def test_tokens_are_counted_like_the_pipeline(tiny_model_dir):
    from transformers import AutoTokenizer

    limit = prompt_limit_for(str(tiny_model_dir))
    reference = AutoTokenizer.from_pretrained(str(tiny_model_dir / "tokenizer"))
    for text in ("a cat", "a red fox jumps, twice!", "x" * 700):
        assert limit.count(text) == len(reference(text, add_special_tokens=True).input_ids)


def test_the_limit_is_the_text_encoders(tiny_model_dir):
    limit = prompt_limit_for(str(tiny_model_dir))
    fits = "a" * (TEXT_TOKENS - 1)  # the tiny tokenizer: one token a character, then </s>
    assert limit.count(fits) == TEXT_TOKENS
    limit.check(fits, "prompt")
    with pytest.raises(RequestError) as info:
        limit.check(fits + "a", "prompt")
    assert info.value.field == "prompt" and f"{TEXT_TOKENS + 1} tokens long" in info.value.message
    with pytest.raises(RequestError, match=f"over the {MAX_PROMPT_CHARS} character limit"):
        limit.check("word " * 100_000, "negative_prompt")
