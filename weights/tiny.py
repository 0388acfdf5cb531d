"""Deterministic tiny random-weight VACE pipelines in the real diffusers layout (for tests and demos)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

TINY_MODELS = {"tiny": "Wan2.1-style, one transformer", "tiny-a14b": "Wan2.2-style, two experts"}
TINY_SEED = 0
TEXT_DIM = 32
BOUNDARY_RATIO = 0.875


def _vocab() -> list[str]:
    """A small word-piece vocabulary: letters, digits, punctuation and their word-initial forms."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()")
    return [f"\u2581{c}" for c in chars] + chars + ["\u2581"]


def build_tokenizer(out_dir: Path) -> None:
    """Write a T5-style fast tokenizer built locally (Unigram over characters, no download)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import T5TokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    pieces = [(s, 0.0) for s in specials] + [(p, -float(i + 1) / 10) for i, p in enumerate(_vocab())]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    fast = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=512)
    fast.save_pretrained(str(out_dir))


def build_components(two_experts: bool) -> dict:
    """Instantiate the tiny components with a fixed seed (same classes as the real checkpoints)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACETransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(TINY_SEED)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer_kwargs = dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=3, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024, vace_layers=[0, 2], vace_in_channels=96,
    )
    components = {"vae": vae, "transformer": WanVACETransformer3DModel(**transformer_kwargs)}
    if two_experts:
        components["transformer_2"] = WanVACETransformer3DModel(**transformer_kwargs)
    text_config = UMT5Config(vocab_size=len(_vocab()) + 3, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                             num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                             decoder_start_token_id=0)
    components["text_encoder"] = UMT5EncoderModel(text_config).eval()
    components["scheduler"] = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                      num_train_timesteps=1000, flow_shift=3.0)
    return components


def write_tiny(out_dir: str | Path, two_experts: bool = False) -> Path:
    """Write one tiny pipeline directory; the same call always writes the same bytes."""
    from diffusers import WanVACEPipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    components = build_components(two_experts)
    build_tokenizer(out / "tokenizer")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    pipe = WanVACEPipeline(tokenizer=tokenizer, boundary_ratio=BOUNDARY_RATIO if two_experts else None,
                           transformer_2=components.pop("transformer_2", None), **components)
    pipe.save_pretrained(str(out), safe_serialization=True)
    _normalise_json(out)
    return out


def write_tiny_bundle(out_dir: str | Path) -> dict[str, Path]:
    """Write every tiny model of TINY_MODELS under out_dir/<name>, plus the tiny safety checker."""
    from pipelines.safety import TINY_NAME, write_tiny_checker

    out = Path(out_dir)
    bundle = {name: write_tiny(out / name, two_experts=(name == "tiny-a14b")) for name in TINY_MODELS}
    bundle[TINY_NAME] = write_tiny_checker(out / TINY_NAME)
    from weights.annotators import ensure_tiny_annotators

    bundle["annotators"] = ensure_tiny_annotators(out)  # out/annotators: the models' annotators root
    return bundle


def _normalise_json(root: Path) -> None:
    """Sort keys in written JSON so output bytes never depend on dict order."""
    for path in root.rglob("*.json"):
        data = json.loads(path.read_text())
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def tiny_home() -> Path:
    import os

    return Path(os.environ.get("VACE_TINY_DIR", Path.home() / ".cache" / "vace-server" / "tiny-v2"))


def write_once(target: Path, marker: str, writer: Callable[[Path], object]) -> Path:
    """target, written by writer(path) on first use: into a staging folder beside it, then renamed into
    place, so concurrent processes never see a half-written directory. `marker` is the file that says done."""
    import shutil
    import tempfile

    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".staging-{target.name}-"))
    writer(staging / target.name)
    try:
        (staging / target.name).rename(target)
    except OSError:  # another process finished first
        pass
    shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(spec: str) -> Path:
    """'tiny' / 'tiny-a14b' -> the built-in tiny model (written on first use); anything else is a path."""
    if spec not in TINY_MODELS:
        return Path(spec)
    home = tiny_home()
    target = write_once(home / spec, "model_index.json",
                        lambda path: write_tiny(path, two_experts=(spec == "tiny-a14b")))
    from weights.annotators import ensure_tiny_annotators

    ensure_tiny_annotators(home)  # every task runs with the tiny model: annotators beside it
    return target


def resolve_safety_checker() -> Path:
    """The tiny random safety classifier of the tiny bundle (written on first use)."""
    from pipelines.safety import TINY_NAME, write_tiny_checker

    return write_once(tiny_home() / TINY_NAME, "config.json", write_tiny_checker)
