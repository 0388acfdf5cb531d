"""A Wan LoRA's tensor shapes under diffusers' key names, from the file's header alone (no torch).

The API process checks at submit that a LoRA fits the model; it cannot import diffusers (whose converters need
torch), so this module renames keys the way WanLoraLoaderMixin.lora_state_dict does for the three published
formats -- diffusers/PEFT, ComfyUI (`diffusion_model.`) and kohya/musubi-tuner (`lora_unet_`) -- and only
for shapes: alpha scalars are dropped (they rescale values, not shapes). tests/test_loras.py checks that the
result equals diffusers' conversion. The worker loads LoRAs through diffusers itself and checks again there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from vace.weights.safetensors_header import TensorInfo

COMFY_PREFIX = "diffusion_model."
KOHYA_PREFIX = "lora_unet_"
# Wan's original module names (ComfyUI / kohya) -> diffusers' names, within one transformer block.
BLOCK_MODULES: dict[str, str] = {
    **{f"{original}.{o}": f"{ours}.{c}" for original, ours in (("self_attn", "attn1"), ("cross_attn", "attn2"))
       for o, c in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))},
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
IMAGE_MODULES = {"cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj"}  # I2V LoRAs
TOP_MODULES = {
    "time_projection.1": "condition_embedder.time_proj", "head.head": "proj_out",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_KOHYA_KEY = re.compile(r"blocks_(\d+)_(self_attn|cross_attn|ffn)_(q|k|v|o|k_img|v_img|0|2)\.(lora_down\.weight|"
                        r"lora_up\.weight|alpha)")

Shapes = dict[str, tuple[int, ...]]


class UnknownKeys(ValueError):
    """The file holds keys diffusers' Wan LoRA converters do not take."""


def key_format(keys: list[str] | Mapping[str, object]) -> str:
    """peft | comfy | kohya, from a LoRA's raw key names (the order diffusers tests them in)."""
    if any(k.startswith(COMFY_PREFIX) for k in keys):
        return "comfy"
    if any(k.startswith(KOHYA_PREFIX) for k in keys):
        return "kohya"
    return "peft"


def converted_shapes(tensors: Mapping[str, TensorInfo]) -> tuple[Shapes, str]:
    """(diffusers key (`transformer.…`) -> shape of every tensor the converters keep, key format); UnknownKeys
    naming a key they would refuse or one they need and the file lacks."""
    fmt = key_format(tensors)
    shapes = {k: v.shape for k, v in tensors.items()}
    if fmt == "comfy":
        out = _comfy(shapes)
    elif fmt == "kohya":
        out = _kohya(shapes)
    else:
        out = shapes
    return {k: v for k, v in out.items() if "dora_scale" not in k}, fmt


def _comfy(raw: Shapes) -> Shapes:
    shapes = {k[len(COMFY_PREFIX):]: v for k, v in raw.items()}
    down = "lora_A" if any("lora_A" in k for k in shapes) else "lora_down"
    up = "lora_B" if any("lora_B" in k for k in shapes) else "lora_up"
    numbers = [k.split(".")[1] for k in shapes if k.startswith("blocks.")]
    if not numbers or not all(n.isdigit() for n in numbers):  # diffusers' converter needs numbered blocks
        raise UnknownKeys("a ComfyUI Wan LoRA needs numbered transformer blocks (blocks.N.…)")
    has_time_weight = any(k.startswith("time_projection") and k.endswith(".weight") for k in shapes)
    image = any("k_img" in k for k in shapes) and any("v_img" in k for k in shapes)
    blocks = BLOCK_MODULES | (IMAGE_MODULES if image else {})
    suffixes = {f"{down}.weight": "lora_A.weight", f"{up}.weight": "lora_B.weight", "diff_b": "lora_B.bias"}
    out: Shapes = {}
    leftover: list[str] = []
    for key, shape in shapes.items():
        if key.endswith((".diff", ".diff_b")) and "norm" in key:
            continue  # norm deltas: dropped by diffusers too
        if "time_projection" in key and not has_time_weight:
            continue
        if key.endswith(".alpha") and (m := _BLOCK_KEY.fullmatch(key.removesuffix(".alpha"))) and m[2] in blocks:
            continue  # diffusers takes alpha on block layers only; elsewhere it is a key left over
        module, suffix = _split(key, suffixes)
        block = _BLOCK_KEY.fullmatch(module) if module else None
        if block and block[2] in blocks:
            out[f"blocks.{block[1]}.{blocks[block[2]]}.{suffixes[suffix]}"] = shape
        elif module in TOP_MODULES:
            out[f"{TOP_MODULES[module]}.{suffixes[suffix]}"] = shape
        elif key == "head.head.diff":
            out["proj_out.lora_A.weight"] = shape
        else:
            leftover.append(key)
    if "head.head.diff" in shapes:  # a head delta without an up matrix: diffusers pairs it with an identity
        if "proj_out.lora_B.bias" not in out:
            raise UnknownKeys("head.head.diff needs head.head.diff_b")
        out["proj_out.lora_B.weight"] = (out["proj_out.lora_B.bias"][0], shapes["head.head.diff"][0])
    stray = [k for k in leftover if not k.endswith(".diff") or "lora" in k]
    if stray:
        raise UnknownKeys(f"keys diffusers' Wan converter does not take: {', '.join(stray[:3])}")
    return {f"transformer.{k}": v for k, v in out.items()}


def _split(key: str, suffixes: dict[str, str]) -> tuple[str | None, str]:
    for suffix in suffixes:
        if key.endswith("." + suffix):
            return key[:-len(suffix) - 1], suffix
    return None, ""


def _kohya(raw: Shapes) -> Shapes:
    """As diffusers' _convert_musubi_wan_lora_to_diffusers: N distinct block numbers mean blocks 0..N-1, each with
    lora_down, lora_up and a one-element alpha for every module (k_img/v_img too in an I2V LoRA), and no other key."""
    shapes = {k[len(KOHYA_PREFIX):]: v for k, v in raw.items()}
    stray = [k for k in shapes if not _KOHYA_KEY.fullmatch(k)]
    if stray:
        raise UnknownKeys(f"a key diffusers' kohya/musubi converter does not take: {KOHYA_PREFIX}{stray[0]}")
    count = len({_KOHYA_KEY.fullmatch(k)[1] for k in shapes})  # type: ignore[index]
    image = any("k_img" in k for k in shapes) and any("v_img" in k for k in shapes)
    blocks = BLOCK_MODULES | (IMAGE_MODULES if image else {})
    out: Shapes = {}
    missing: list[str] = []
    for i in range(count):
        for module, ours in blocks.items():
            name = f"blocks_{i}_{module.replace('.', '_')}"
            down, up, alpha = (shapes.pop(f"{name}.{part}", None)
                               for part in ("lora_down.weight", "lora_up.weight", "alpha"))
            missing += [f"{KOHYA_PREFIX}{name}.{part}" for part, shape in
                        (("lora_down.weight", down), ("lora_up.weight", up), ("alpha", alpha)) if shape is None]
            if alpha is not None and math.prod(alpha) != 1:
                raise UnknownKeys(f"{KOHYA_PREFIX}{name}.alpha has shape {alpha}; diffusers needs one number")
            if down is not None and up is not None:
                out[f"transformer.blocks.{i}.{ours}.lora_A.weight"] = down
                out[f"transformer.blocks.{i}.{ours}.lora_B.weight"] = up
    if missing:
        raise UnknownKeys(f"a kohya/musubi LoRA with {count} blocks needs every layer of blocks 0-{count - 1}; "
                          f"missing {len(missing)} key(s), e.g. {', '.join(missing[:3])}")
    if shapes:
        raise UnknownKeys(f"keys diffusers' kohya/musubi converter does not take: "
                          f"{', '.join(KOHYA_PREFIX + k for k in list(shapes)[:3])}")
    return out
