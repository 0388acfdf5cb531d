"""The published configurations of the supported checkpoints' components, written out as facts.

They are the `config.json` of each diffusers folder (Wan-AI/Wan2.1-VACE-14B-diffusers, ...-1.3B-diffusers; the
Wan2.2-VACE-Fun-A14B experts have the 14B transformer's shape), so a model of the real shape can be built with
random weights -- benchmarks, memory measurements, the meta-device checks -- without any download.
"""

from __future__ import annotations

from typing import Any

_WAN_COMMON: dict[str, Any] = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16,
                                   text_dim=4096, freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                   eps=1e-6, rope_max_seq_len=1024, added_kv_proj_dim=None, vace_in_channels=96)

# transformer/config.json (WanVACETransformer3DModel)
VACE_14B: dict[str, Any] = dict(_WAN_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40,
                                vace_layers=[0, 5, 10, 15, 20, 25, 30, 35])
VACE_1_3B: dict[str, Any] = dict(_WAN_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30,
                                 vace_layers=list(range(0, 30, 2)))
TRANSFORMERS: dict[str, dict[str, Any]] = {"14b": VACE_14B, "1.3b": VACE_1_3B}

# vae/config.json (AutoencoderKLWan): the Wan2.1 VAE every supported checkpoint ships (its latents_mean/std are
# the class defaults and do not change the shape).
WAN21_VAE: dict[str, Any] = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                 temperal_downsample=[False, True, True], dropout=0.0)

# text_encoder/config.json (UMT5EncoderModel): google/umt5-xxl's encoder.
UMT5_XXL: dict[str, Any] = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                                decoder_start_token_id=0)

# The scheduler every Wan2.1 VACE checkpoint ships (scheduler/scheduler_config.json).
UNIPC_FLOW: dict[str, Any] = dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                  flow_shift=3.0)
