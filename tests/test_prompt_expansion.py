"""Prompt expansion on the tiny random Qwen2 (real transformers classes, locally built tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vace.pipelines.conditioning.prompt_expansion import (
    SYSTEM_PROMPT,
    PromptExtender,
    extender_for,
    messages,
)
from vace.pipelines.fixtures.tiny_prompt_extender import write_tiny_prompt_extender


@pytest.fixture(scope="module")
def extender(tmp_path_factory: pytest.TempPathFactory) -> PromptExtender:
    return extender_for(write_tiny_prompt_extender(tmp_path_factory.mktemp("llm") / "prompt-extender"))


def test_rewrite_is_new_and_deterministic_for_a_seed(extender: PromptExtender):
    first = extender.expand("a red fox running through snow", seed=7)
    assert first.expanded and first.prompt.strip() and first.prompt != "a red fox running through snow"
    assert extender.expand("a red fox running through snow", seed=7) == first
    assert extender.expand("a red fox running through snow", seed=8).prompt != first.prompt


def test_the_chat_carries_our_system_prompt(extender: PromptExtender):
    ids = extender.inputs("a cat", [])["input_ids"][0]
    text = extender.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n" + SYSTEM_PROMPT) and text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\na cat<|im_end|>" in text


def test_images_given_to_a_text_model_are_named_in_the_note(extender: PromptExtender):
    result = extender.expand("a cat", [Image.new("RGB", (16, 16))], seed=1)
    assert "1 image(s) not shown" in result.note


def test_vision_chat_puts_the_images_before_the_text():
    assert messages("a cat", 2)[1]["content"] == [{"type": "image"}, {"type": "image"},
                                                  {"type": "text", "text": "a cat"}]


def test_missing_folder_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError) as err:
        PromptExtender(tmp_path)
    assert f"expected config.json, tokenizer_config.json, *.safetensors in {tmp_path}" in str(err.value)


def test_answers_are_cleaned_to_one_printable_line():
    from vace.pipelines.conditioning.prompt_expansion import clean

    assert clean(" a\x00 fox\n\truns \ufffd\x02 fast ") == "a fox runs fast"


def test_a_vision_model_sees_the_images(tmp_path: Path):
    import numpy as np
    import torch

    vl = PromptExtender(write_tiny_prompt_extender(tmp_path / "vl", vision=True))
    assert vl.vision
    noise = Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8))
    with_noise, with_black = vl.inputs("a cat", [noise]), vl.inputs("a cat", [Image.new("RGB", (80, 64))])
    text_only = vl.inputs("a cat", [])
    grid = with_noise["image_grid_thw"][0].tolist()
    assert len(with_noise["input_ids"][0]) == len(text_only["input_ids"][0]) + 2 + grid[1] * grid[2] // 4
    with torch.no_grad():
        logits = [vl.model(**inputs).logits[0, -1] for inputs in (with_noise, with_black)]
    assert not torch.equal(logits[0], logits[1])  # the pixels reach the answer
    result = vl.expand("a cat", [noise], seed=3)
    assert result.expanded and result.note == "" and result == vl.expand("a cat", [noise], seed=3)
