"""The FLOP function against a hand calculation for the 14B config (performance.md: about 2.0 PFLOP)."""

from __future__ import annotations

import pytest

from vace.pipelines.acceleration.flops import latent_tokens, transformer_flops
from vace.weights.configs import TRANSFORMERS as REAL_CONFIGS


def _hand_count_14b(width: int, height: int, frames: int) -> float:
    """Written out from the model's parameters: 2 FLOPs per weight per token, plus the attention products.

    Weights a video token passes through per main block: self-attn 4 x 5120^2, cross-attn Q and O
    2 x 5120^2, FFN 2 x 5120 x 13824. The 8 VACE blocks add their output projection (5120^2 each) and
    block 0 its input projection. Cross-attn K, V act on the 512 text tokens only.
    """
    d, ffn, text = 5120, 13824, 512
    tokens = (frames // 4 + 1) * (height // 16) * (width // 16)
    per_token_weights = 48 * (6 * d * d + 2 * d * ffn) + 9 * d * d + 64 * (16 + 96 + 16) * d
    linear = 2 * tokens * per_token_weights
    text_kv = 48 * 2 * text * 2 * d * d + 2 * text * (4096 * d + d * d)
    attention = 48 * (2 * 2 * tokens * tokens * d + 2 * 2 * tokens * text * d)
    return float(linear + text_kv + attention)


def test_tokens_match_the_spec():
    assert latent_tokens(REAL_CONFIGS["14b"], 832, 480, 81) == 32760
    assert latent_tokens(REAL_CONFIGS["14b"], 1280, 720, 81) == 75600
    assert latent_tokens(REAL_CONFIGS["14b"], 832, 480, 81, reference_images=1) == 32760 + 1560


def test_14b_480p_matches_hand_calculation_within_2_percent():
    counted = transformer_flops(REAL_CONFIGS["14b"], 832, 480, 81)
    assert counted == pytest.approx(_hand_count_14b(832, 480, 81), rel=0.02)
    assert counted == pytest.approx(2.0e15, rel=0.02)


def test_14b_720p_and_scaling():
    counted = transformer_flops(REAL_CONFIGS["14b"], 1280, 720, 81)
    assert counted == pytest.approx(_hand_count_14b(1280, 720, 81), rel=0.02)
    assert counted == pytest.approx(7.8e15, rel=0.02)
    # attention is quadratic: 2.31x the tokens costs more than 2.31x the FLOPs
    assert counted / transformer_flops(REAL_CONFIGS["14b"], 832, 480, 81) > 75600 / 32760


def test_weights_term_agrees_with_the_real_module_parameters():
    """2 x tokens x (linear weights a video token meets) from the real class on the meta device."""
    import torch
    from diffusers import WanVACETransformer3DModel

    config = REAL_CONFIGS["1.3b"]
    with torch.device("meta"):
        model = WanVACETransformer3DModel(**config)
    weights = sum(m.weight.numel() for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and (".attn" in name or ".ffn" in name or "proj_" in name)
                  and not name.endswith(("attn2.to_k", "attn2.to_v")) and name.startswith(("blocks", "vace_blocks")))
    tokens = latent_tokens(config, 832, 480, 81)
    d = config["num_attention_heads"] * config["attention_head_dim"]
    n_blocks = config["num_layers"] + len(config["vace_layers"])
    attention = n_blocks * (4 * tokens * tokens * d + 4 * tokens * 512 * d)
    without_ends = transformer_flops(config, 832, 480, 81) - attention
    assert 2 * tokens * weights == pytest.approx(without_ends, rel=0.01)
