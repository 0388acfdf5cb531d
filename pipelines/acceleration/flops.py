"""The analytic FLOP count of one WanVACETransformer3DModel forward (what MFU is measured against)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

VAE_SPATIAL = 8
VAE_TEMPORAL = 4


def latent_tokens(config: Mapping[str, Any], width: int, height: int, num_frames: int,
                  reference_images: int = 0) -> int:
    """Video tokens the transformer sees: latent frames (plus one per reference image) x patches."""
    p_t, p_h, p_w = config["patch_size"]
    frames = (num_frames - 1) // VAE_TEMPORAL + 1 + reference_images
    return (frames // p_t) * (height // VAE_SPATIAL // p_h) * (width // VAE_SPATIAL // p_w)


def transformer_flops(config: Mapping[str, Any], width: int, height: int, num_frames: int,
                      text_tokens: int = 512, reference_images: int = 0) -> float:
    """FLOPs (2 per multiply-add) of one forward: every matmul and attention product, nothing elementwise.

    Per main block, with L video tokens, T text tokens, width d, FFN width f:
      self-attention  Q,K,V,O projections 8*L*d^2 + scores and weighted sum 4*L^2*d
      cross-attention Q,O 4*L*d^2 + K,V over the text 4*T*d^2 + scores and sum 4*L*T*d
      feed-forward    4*L*d*f
    A VACE block is the same plus its output projection 2*L*d^2 (and the first one an input one).
    Plus the patch embeddings, the text embedder and the output projection.
    """
    d = config["num_attention_heads"] * config["attention_head_dim"]
    f = config["ffn_dim"]
    patch = math.prod(config["patch_size"])
    tokens = latent_tokens(config, width, height, num_frames, reference_images)
    n_vace = len(config["vace_layers"])
    block = (8 * tokens * d * d + 4 * tokens * tokens * d
             + 4 * tokens * d * d + 4 * text_tokens * d * d + 4 * tokens * text_tokens * d
             + 4 * tokens * d * f)
    vace_projections = 2 * tokens * d * d * (n_vace + 1)
    embeddings = (2 * tokens * d * patch * (config["in_channels"] + config["vace_in_channels"])
                  + 2 * text_tokens * d * (config["text_dim"] + d))
    head = 2 * tokens * d * patch * config["out_channels"]
    return float((config["num_layers"] + n_vace) * block + vace_projections + embeddings + head)


def counted_flops(config: Mapping[str, Any], width: int, height: int, num_frames: int,
                  text_tokens: int = 512) -> float:
    """The same figure counted by torch's FLOP counter over one real WanVACETransformer3DModel forward on the
    meta device (no memory, no compute): a config or shape that transformer_flops() gets wrong shows here."""
    import torch  # heavy optional deps, imported only when counting
    from diffusers import WanVACETransformer3DModel  # diffusers loads only where a model is built

    # torch loads only where tensors are used (the API process never needs it)
    from torch.utils.flop_counter import FlopCounterMode

    frames = (num_frames - 1) // VAE_TEMPORAL + 1
    latent = (frames, height // VAE_SPATIAL, width // VAE_SPATIAL)
    with torch.device("meta"):
        model = WanVACETransformer3DModel(**config)
        inputs = dict(hidden_states=torch.empty(1, config["in_channels"], *latent),
                      control_hidden_states=torch.empty(1, config["vace_in_channels"], *latent),
                      encoder_hidden_states=torch.empty(1, text_tokens, config["text_dim"]),
                      timestep=torch.empty(1), control_hidden_states_scale=torch.ones(len(config["vace_layers"])))
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(**inputs, return_dict=False)
    return float(counter.get_total_flops())
