"""LoRAs: request field parsing, the three key formats, fit checks, the library (names, paths, URLs) and hot
swap on the tiny models (scale 1 differs, scale 0 and no LoRA are bit-identical, no leak between jobs)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from vace.pipelines.acceleration.presets import DistillRecipe, apply_distill
from vace.pipelines.engine.group import GroupRenderer, render_group
from vace.pipelines.engine.loading import load_pipeline
from vace.pipelines.engine.lora_keys import UnknownKeys, converted_shapes
from vace.pipelines.engine.loras import (
    ActiveLora,
    LoraConfig,
    LoraLibrary,
    adapters_for,
    check_request_loras,
    describe_base,
    linear_shapes_from_module,
    linear_shapes_from_weights,
    lora_shapes,
    read_lora,
)
from vace.pipelines.engine.render import Renderer
from vace.pipelines.fixtures.tiny_loras import TINY_DISTILL, TINY_STYLE, write_lora, write_tiny_loras
from vace.pipelines.job.loras import LoraSpec, parse_loras
from vace.pipelines.job.request import GenerationRequest, RequestError
from vace.pipelines.media.fetch import FetchPolicy
from vace.server.serve import check_turbo_for
from vace.server.service.loras import check_distill_fits, check_loras, library_listing
from vace.server.service.served import ModelUnreadable
from vace.server.settings import ServeSettings
from vace.weights.safetensors_header import HeaderError, TensorInfo, read_header

STYLE_FILES = (TINY_STYLE, f"{TINY_STYLE}-comfy", f"{TINY_STYLE}-kohya")


@pytest.fixture(scope="module")
def library_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loras")
    write_tiny_loras(root)
    return root


@pytest.fixture(scope="module")
def library(library_dir: Path) -> LoraLibrary:
    return LoraLibrary(library_dir)


@pytest.fixture(scope="module")
def tiny_linears(tiny_model_dir: Path):
    """The tiny model's layers per transformer subfolder, as check_request_loras looks them up."""
    return functools.partial(linear_shapes_from_weights, tiny_model_dir)


@pytest.fixture(scope="module")
def other_base_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA for a wider Wan transformer (width 48): the tiny models must refuse it."""
    return write_lora(tmp_path_factory.mktemp("other") / "wide.safetensors", "comfy", seed=3, dim=48)


def small(**kw) -> GenerationRequest:
    base = dict(prompt="a red fox in the snow", width=32, height=32, num_frames=5, steps=2, seed=11)
    base.update(kw)
    return GenerationRequest(**base)


# --- the request field -------------------------------------------------------------------------------------

def test_loras_field_parses_and_names_the_bad_entry():
    specs = parse_loras([{"name": "tiny-style", "scale": 0.5}, {"url": "https://x.test/a.safetensors"},
                         {"path": "/tmp/a.safetensors", "expert": "low_noise"}])
    assert specs[0] == LoraSpec(name="tiny-style", scale=0.5)
    assert specs[1].source == "url" and specs[1].scale == 1.0
    assert specs[2].expert == "low_noise" and specs[2].to_dict() == {"path": "/tmp/a.safetensors", "scale": 1.0,
                                                                     "expert": "low_noise"}
    cases = [
        ("x", "loras"),
        ([{"name": "a", "url": "https://x.test/a"}], "loras[0]"),
        ([{}], "loras[0]"),
        ([{"name": "ok"}, {"name": "../etc/passwd"}], "loras[1].name"),
        ([{"name": "a", "scale": 9}], "loras[0].scale"),
        ([{"name": "a", "scale": True}], "loras[0].scale"),
        ([{"name": "a", "expert": "middle"}], "loras[0].expert"),
        ([{"name": "a", "weight": 1}], "loras[0].weight"),
        ([{"name": "a"}] * 9, "loras"),
    ]
    for value, field in cases:
        with pytest.raises(RequestError) as err:
            parse_loras(value)
        assert err.value.field == field, (value, err.value)


def test_cli_form_path_name_or_url_with_scale(tmp_path):
    file = tmp_path / "mine.safetensors"
    file.write_bytes(b"")
    assert LoraSpec.parse("tiny-style") == LoraSpec(name="tiny-style")
    assert LoraSpec.parse("tiny-style:0.7") == LoraSpec(name="tiny-style", scale=0.7)
    assert LoraSpec.parse(f"{file}:-1") == LoraSpec(path=str(file), scale=-1.0)
    assert LoraSpec.parse("https://h.test/x.safetensors") == LoraSpec(url="https://h.test/x.safetensors")
    assert LoraSpec.parse("https://h.test/x.safetensors:2") == LoraSpec(url="https://h.test/x.safetensors", scale=2)


# --- key formats and fit -----------------------------------------------------------------------------------

def test_three_key_formats_convert_to_the_same_tensors(library_dir):
    converted = [read_lora(library_dir / f"{name}.safetensors", "loras[0]")[0] for name in STYLE_FILES]
    peft = converted[0]
    assert len(peft) == 3 * 10 * 2  # 3 blocks x (4 self + 4 cross + 2 ffn) layers x (A, B)
    for other in converted[1:]:
        assert set(other) == set(peft)
        assert all(torch.equal(other[k], peft[k]) for k in peft)


def test_header_only_shapes_match_the_loaded_tensors(library_dir):
    for name in (*STYLE_FILES, TINY_DISTILL):
        path = library_dir / f"{name}.safetensors"
        shapes, fmt = lora_shapes(path, "loras[0]")
        tensors, _ = read_lora(path, "loras[0]")
        assert shapes == {k: tuple(v.shape) for k, v in tensors.items()}
        assert fmt == {"tiny-style": "peft", "tiny-style-kohya": "kohya"}.get(name, "comfy")
    assert describe_base(shapes) == {"model": "the tiny test model", "width": 24, "blocks": 3, "rank": 4,
                                     "image_to_video": False, "vace_blocks": False}


def _extra_keys(fmt: str) -> dict[str, torch.Tensor]:
    """A LoRA with the rarer key kinds published Wan LoRAs carry (I2V image projections, bias deltas, norm
    deltas, embedder and head layers), with shapes made up per layer so any mix-up shows."""
    gen = torch.Generator().manual_seed(5)

    def pair(prefix: str, rank: int, fan_in: int, fan_out: int) -> dict[str, torch.Tensor]:
        alpha = {f"{prefix}.alpha": torch.tensor(float(rank))} if "blocks" in prefix else {}  # diffusers: blocks only
        return {f"{prefix}.lora_down.weight": torch.randn(rank, fan_in, generator=gen),
                f"{prefix}.lora_up.weight": torch.randn(fan_out, rank, generator=gen), **alpha}

    if fmt == "kohya":
        out = {}
        for i in range(2):
            for j, o in enumerate(("q", "k", "v", "o", "k_img", "v_img")):
                for attn in ("self_attn", "cross_attn") if "img" not in o else ("cross_attn",):
                    out |= pair(f"lora_unet_blocks_{i}_{attn}_{o}", 2 + j % 3, 24, 24)
            out |= pair(f"lora_unet_blocks_{i}_ffn_0", 3, 24, 32) | pair(f"lora_unet_blocks_{i}_ffn_2", 3, 32, 24)
        return out
    p = "diffusion_model."
    out = pair(f"{p}blocks.0.self_attn.q", 2, 24, 24) | pair(f"{p}blocks.1.cross_attn.k_img", 3, 24, 24)
    out |= pair(f"{p}blocks.1.cross_attn.v_img", 4, 24, 24) | pair(f"{p}blocks.1.ffn.0", 5, 24, 32)
    out |= pair(f"{p}time_projection.1", 2, 24, 144) | pair(f"{p}text_embedding.0", 3, 16, 24)
    out |= pair(f"{p}time_embedding.2", 2, 24, 24) | pair(f"{p}img_emb.proj.1", 2, 20, 20)
    out |= {f"{p}blocks.0.self_attn.q.diff_b": torch.zeros(24), f"{p}blocks.0.self_attn.norm_q.diff": torch.zeros(24),
            f"{p}blocks.0.modulation.diff": torch.zeros(1, 6, 24), f"{p}time_projection.1.diff_b": torch.zeros(144),
            f"{p}img_emb.proj.1.diff_b": torch.zeros(20)}
    if fmt == "comfy-head-delta":
        out |= {f"{p}head.head.diff": torch.zeros(7, 24), f"{p}head.head.diff_b": torch.zeros(9)}
    else:
        out |= pair(f"{p}head.head", 2, 24, 7)
    return out


# Kohya LoRAs diffusers refuses (KeyError): a gap in the block numbers, a block without one module, a missing alpha.
PARTIAL_KOHYA = {
    "kohya-gap": lambda t: {k.replace("blocks_1_", "blocks_2_"): v for k, v in t.items()},
    "kohya-missing-module": lambda t: {k: v for k, v in t.items() if "blocks_1_ffn_2." not in k},
    "kohya-no-alpha": lambda t: {k: v for k, v in t.items() if k != "lora_unet_blocks_0_cross_attn_o.alpha"},
}


@pytest.mark.parametrize("fmt", ["comfy", "comfy-head-delta", "kohya", *PARTIAL_KOHYA])
def test_header_key_conversion_matches_diffusers_on_rarer_keys(fmt, tmp_path):
    from diffusers import WanVACEPipeline
    from safetensors.torch import save_file

    tensors = _extra_keys(fmt) if fmt not in PARTIAL_KOHYA else PARTIAL_KOHYA[fmt](_extra_keys("kohya"))
    save_file(tensors, str(tmp_path / "x.safetensors"))
    if fmt in PARTIAL_KOHYA:
        with pytest.raises(KeyError):
            WanVACEPipeline.lora_state_dict(dict(tensors))
        with pytest.raises(UnknownKeys, match="missing"):
            converted_shapes(read_header(tmp_path / "x.safetensors"))
        return
    theirs = WanVACEPipeline.lora_state_dict(dict(tensors))
    shapes, key_format = converted_shapes(read_header(tmp_path / "x.safetensors"))
    assert shapes == {k: tuple(v.shape) for k, v in theirs.items()}
    assert key_format == fmt.removesuffix("-head-delta")


def test_keys_diffusers_refuses_are_refused_from_the_header(tmp_path):
    from diffusers import WanVACEPipeline
    from safetensors.torch import save_file

    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 24),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(24, 2),
               "diffusion_model.blocks.0.mystery.lora_up.weight": torch.zeros(24, 2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(RequestError) as err:
        lora_shapes(tmp_path / "x.safetensors", "loras[0].name")
    assert err.value.field == "loras[0].name" and "blocks.0.mystery.lora_up.weight" in err.value.message
    head_only = {"diffusion_model.head.head.lora_down.weight": torch.zeros(2, 24),
                 "diffusion_model.head.head.lora_up.weight": torch.zeros(7, 2)}
    save_file(head_only, str(tmp_path / "head.safetensors"))
    with pytest.raises(ValueError):  # diffusers' converter needs blocks, and so does the header check
        WanVACEPipeline.lora_state_dict(dict(head_only))
    with pytest.raises(RequestError, match="numbered transformer blocks"):
        lora_shapes(tmp_path / "head.safetensors", "loras[0].name")
    with open(tmp_path / "x.safetensors", "r+b") as fh:  # a header that claims more bytes than the file has
        fh.truncate(200)
    with pytest.raises(RequestError, match="not a readable .safetensors"):
        lora_shapes(tmp_path / "x.safetensors", "loras[0].name")


def test_lora_for_another_base_model_is_refused_naming_the_field(library, library_dir, other_base_lora, tiny_linears,
                                                                  tiny_model_dir, tiny_model):
    shapes, _ = lora_shapes(other_base_lora, "x")
    assert describe_base(shapes)["width"] == 48
    assert linear_shapes_from_weights(tiny_model_dir) == linear_shapes_from_module(tiny_model.pipeline.transformer)
    lib = LoraLibrary(library_dir)
    check_request_loras(parse_loras([{"name": TINY_STYLE}]), lib, tiny_linears, False, "tiny")
    with pytest.raises(RequestError) as err:
        check_request_loras(parse_loras([{"name": TINY_STYLE}, {"path": str(other_base_lora)}]), lib,
                            tiny_linears, False, "tiny")
    assert err.value.field == "loras[1].path"
    assert "does not fit model tiny" in err.value.message and "width 48" in err.value.message
    assert "24->24" in err.value.message


def test_not_a_lora_and_wrong_expert_are_refused(library, tmp_path, tiny_linears):
    from safetensors.torch import save_file

    save_file({"blocks.0.attn1.to_q.weight": torch.zeros(24, 24)}, str(tmp_path / "full.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    lib = LoraLibrary(tmp_path)
    for name in ("full", "junk"):
        with pytest.raises(RequestError) as err:
            check_request_loras([LoraSpec(name=name)], lib, tiny_linears, False, "tiny")
        assert err.value.field == "loras[0].name"
    with pytest.raises(RequestError) as err:
        check_request_loras([LoraSpec(name=TINY_STYLE, expert="low_noise")], library, tiny_linears, False, "tiny")
    assert err.value.field == "loras[0].expert"


# --- the library ---------------------------------------------------------------------------------------------

def test_library_names_paths_and_listing(library, library_dir, tiny_model_dir):
    assert library.names() == sorted([*STYLE_FILES, TINY_DISTILL])
    file = library.resolve(LoraSpec(name=TINY_STYLE), "loras[0]")
    assert file.path == library_dir / "tiny-style.safetensors" and len(file.sha256) == 64
    with pytest.raises(RequestError) as err:
        library.resolve(LoraSpec(name="nope"), "loras[2]")
    assert err.value.field == "loras[2].name" and "tiny-style" in err.value.message
    no_paths = LoraLibrary(library_dir, allow_paths=False)
    with pytest.raises(RequestError) as err:
        no_paths.resolve(LoraSpec(path=str(file.path)), "loras[0]")
    assert err.value.field == "loras[0].path" and "not accepted" in err.value.message
    with pytest.raises(RequestError) as err:
        LoraLibrary().resolve(LoraSpec(name=TINY_STYLE), "loras[0]")
    assert "--lora-dir" in err.value.message

    entries = {e["name"]: e for e in library.entries({"tiny": linear_shapes_from_weights(tiny_model_dir)})}
    assert entries[TINY_STYLE]["sha256"] == file.sha256
    assert entries[TINY_STYLE]["size"] == file.path.stat().st_size
    assert entries[f"{TINY_STYLE}-kohya"]["format"] == "kohya"
    assert entries[TINY_DISTILL]["base_model"]["model"] == "the tiny test model"
    assert all(e["fits"] == ["tiny"] for e in entries.values())


class _Files(http.server.BaseHTTPRequestHandler):
    body = b""
    hits = 0

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).hits += 1
        if self.path.startswith("/resolve/"):  # as Hugging Face answers: a redirect to its CDN
            self.send_response(302)
            self.send_header("Location", "/cdn/" + self.path.removeprefix("/resolve/"))
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_url_is_fetched_once_and_cached_by_sha256(library_dir, tmp_path, tiny_linears):
    _Files.body = (library_dir / "tiny-style-comfy.safetensors").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/resolve/style.safetensors"
        refused = LoraLibrary(cache_dir=tmp_path / "cache")
        with pytest.raises(RequestError) as err:
            refused.resolve(LoraSpec(url=url), "loras[0]")
        assert err.value.field == "loras[0].url" and "not allowed to fetch" in err.value.message
        lib = LoraLibrary(cache_dir=tmp_path / "cache", fetch_policy=FetchPolicy(allow_private=True))
        assert lib.resolve(LoraSpec(url=url), "loras[0]", fetch=False) is None
        first = lib.resolve(LoraSpec(url=url), "loras[0]")
        again = LoraLibrary(cache_dir=tmp_path / "cache").resolve(LoraSpec(url=url), "loras[0]", fetch=False)
        assert _Files.hits == 2  # the redirect and the file, once
        assert first == again and first.path.name == f"{first.sha256}.safetensors"
        check_request_loras([LoraSpec(url=url)], lib, tiny_linears, False, "tiny")
        with pytest.raises(RequestError) as err:
            LoraLibrary().resolve(LoraSpec(url=url), "loras[0]")
        assert "fetches no LoRA URLs" in err.value.message
        # a readable header over data with bytes no tensor owns: safetensors refuses it, so it is not cached
        _Files.body += b"\0" * 16
        bad = f"http://127.0.0.1:{server.server_address[1]}/cdn/padded.safetensors"
        with pytest.raises(RequestError) as err:
            lib.resolve(LoraSpec(url=bad), "loras[0]")
        assert err.value.field == "loras[0].url" and "not a .safetensors file" in err.value.message
        assert bad not in (tmp_path / "cache" / "urls.json").read_text()
    finally:
        server.shutdown()
        server.server_close()


# --- hot swap on the loaded model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_tiny(tiny_model_dir):
    """A tiny model of this module's own: adapters loaded here never reach the session's shared model."""
    return load_pipeline(tiny_model_dir, device="cpu")


def test_scale_one_differs_scale_zero_identical_and_no_leak(own_tiny, library_dir, tmp_path):
    renderer = Renderer(own_tiny, work_dir=tmp_path, loras=LoraConfig(library_dir))

    def render(*loras: tuple[str, float]) -> np.ndarray:
        return renderer.render(small(loras=[{"name": n, "scale": s} for n, s in loras])).frames

    base = render()
    styled = render((TINY_STYLE, 1.0))
    assert np.abs(styled - base).max() > 1e-3
    assert np.array_equal(render((TINY_STYLE, 0.0)), base)
    # alternating jobs reproduce their own outputs exactly
    assert np.array_equal(render(), base)
    assert np.array_equal(render((TINY_STYLE, 1.0)), styled)
    assert np.array_equal(render(), base)
    # the same weights in ComfyUI and kohya keys give the same frames
    for name in STYLE_FILES[1:]:
        assert np.array_equal(render((name, 1.0)), styled), name
    # two LoRAs at once
    assert not np.array_equal(render((TINY_STYLE, 1.0), (TINY_DISTILL, 1.0)), styled)


def test_lru_evicts_least_recently_used_and_reloads_exactly(tiny_model_dir, library, library_dir, tmp_path):
    model = load_pipeline(tiny_model_dir, device="cpu")
    renderer = Renderer(model, work_dir=tmp_path, loras=LoraConfig(library_dir, capacity=2))
    request = small(loras=[{"name": TINY_STYLE}])
    first = renderer.render(request)
    adapters = adapters_for(model)
    assert adapters.capacity == 2 and first.metrics["loras"][0]["cached"] is False
    files = [library.resolve(LoraSpec(name=n), "loras[0]") for n in (TINY_STYLE, TINY_DISTILL, f"{TINY_STYLE}-kohya")]

    def use(file) -> list[dict]:
        with adapters.applied([ActiveLora(file, 1.0)]) as records:
            return records

    use(files[1])
    assert use(files[0])[0]["cached"] is True
    use(files[2])  # evicts files[1], the least recently used
    assert adapters.loaded() == [files[0].sha256, files[2].sha256]
    assert set(model.pipeline.transformer.peft_config) == {f"lora_{f.sha256[:16]}" for f in (files[0], files[2])}
    assert use(files[1])[0]["cached"] is False and adapters.loaded() == [files[2].sha256, files[1].sha256]
    again = renderer.render(request)  # files[0] was evicted: loaded again, same frames
    assert again.metrics["loras"][0]["cached"] is False and np.array_equal(again.frames, first.frames)


@pytest.fixture(scope="module")
def own_a14b(tiny_a14b_dir):
    """This module's own two-expert tiny model (its adapters stay here)."""
    return load_pipeline(tiny_a14b_dir, device="cpu")


def test_two_experts_take_a_lora_each_or_both(own_a14b, library, library_dir, tmp_path):
    model = own_a14b
    renderer = Renderer(model, work_dir=tmp_path, loras=LoraConfig(library_dir))
    style = library.resolve(LoraSpec(name=TINY_STYLE), "loras[0]")

    def render(expert: str | None = None) -> np.ndarray:
        # boundary 0.875 at shift 1: step 1 (t=1000) runs the high-noise expert, step 2 (t=500) the low-noise
        loras = [{"name": TINY_STYLE, "expert": expert}] if expert else []
        return renderer.render(small(shift=1.0, loras=loras)).frames

    base = render()
    high, low, both = (render(e) for e in ("high_noise", "low_noise", "both"))
    frames = [base, high, low, both]
    assert all(not np.array_equal(a, b) for i, a in enumerate(frames) for b in frames[i + 1:])
    assert "lora_" + style.sha256[:16] in model.pipeline.transformer.peft_config
    assert np.array_equal(render(), base)
    assert np.array_equal(render("high_noise"), high)


# --- preset turbo --------------------------------------------------------------------------------------------

def test_turbo_runs_the_distill_recipe_and_is_refused_without_one(own_tiny, library_dir, tmp_path):
    recipe = DistillRecipe(TINY_DISTILL, steps=4, shift=5.0, sampler="dpm++")
    renderer = Renderer(own_tiny, work_dir=tmp_path, loras=LoraConfig(library_dir, distill=recipe))
    steps: list[int] = []
    result = renderer.render(small(preset="turbo", steps=30, guidance=5.0, loras=[{"name": TINY_STYLE}]),
                             on_progress=lambda i, n: steps.append(n))
    m = result.metrics
    assert steps == [4] * 4 and m["steps"] == 4 and m["guidance"] == 1.0 and m["shift"] == 5.0
    assert m["preset"] == "turbo" and m["sampler"] == "dpm++"
    assert m["transformer_evaluations"] == 4 and m["transformer_evaluations_skipped"] == 0  # no CFG pass
    assert [(r["lora"], r["scale"]) for r in m["loras"]] == [(TINY_DISTILL, 1.0), (TINY_STYLE, 1.0)]
    # the recipe by hand (same LoRAs, steps, guidance, shift, sampler) gives the same frames
    by_hand = renderer.render(small(steps=4, guidance=1.0, guidance_2=1.0, shift=5.0, sampler="dpm++",
                                    loras=[{"name": TINY_DISTILL}, {"name": TINY_STYLE}]))
    assert np.array_equal(by_hand.frames, result.frames)

    with pytest.raises(RequestError) as err:
        Renderer(own_tiny, work_dir=tmp_path, loras=LoraConfig(library_dir)).prepare(small(preset="turbo"))
    assert err.value.field == "preset" and "--distill-lora" in err.value.message


def test_two_expert_turbo_runs_a_distill_pair(own_a14b, tiny_a14b_dir, tiny_model_dir, library_dir, other_base_lora,
                                             tmp_path):
    """--distill-lora-low-noise: the pair's high-noise LoRA on transformer, the low-noise one on transformer_2;
    a one-transformer model takes the first alone."""
    low = write_lora(tmp_path / "low-distill.safetensors", "comfy", seed=4, dtype="bfloat16")
    recipe = DistillRecipe(TINY_DISTILL, low_noise_lora=str(low))
    assert apply_distill(small(preset="turbo"), recipe).loras == [{"name": TINY_DISTILL, "scale": 1.0}]
    renderer = Renderer(own_a14b, work_dir=tmp_path, loras=LoraConfig(library_dir, distill=recipe))
    result = renderer.render(small(preset="turbo", steps=30))
    m = result.metrics
    assert [(r["lora"], r["expert"]) for r in m["loras"]] == [(TINY_DISTILL, "high_noise"), (str(low), "low_noise")]
    assert m["steps"] == 4 and m["guidance"] == 1.0
    by_hand = renderer.render(small(steps=4, guidance=1.0, guidance_2=1.0, shift=5.0, sampler="dpm++",
                                    loras=[{"name": TINY_DISTILL, "expert": "high_noise"},
                                           {"path": str(low), "expert": "low_noise"}]))
    assert np.array_equal(by_hand.frames, result.frames)
    one = Renderer(own_a14b, work_dir=tmp_path, loras=LoraConfig(library_dir, distill=DistillRecipe(TINY_DISTILL)))
    assert not np.array_equal(one.render(small(preset="turbo", steps=30)).frames, result.frames)

    check_distill_fits(LoraConfig(library_dir, distill=recipe), "tiny-a14b", str(tiny_a14b_dir))
    check_distill_fits(LoraConfig(library_dir, distill=recipe), "tiny", str(tiny_model_dir))
    wrong = DistillRecipe(TINY_DISTILL, low_noise_lora=str(other_base_lora))
    with pytest.raises(RequestError) as err:
        check_distill_fits(LoraConfig(library_dir, distill=wrong), "tiny-a14b", str(tiny_a14b_dir))
    assert err.value.field == "preset" and "does not fit model tiny-a14b" in err.value.message


def test_prepare_takes_the_experts_from_the_loaded_model(own_a14b, library_dir, tmp_path):
    """The distill pair goes on a two-expert model whose directory holds no model_index.json (a model moved, or
    built in place): the loaded model knows its experts, the job does not re-read the index."""
    low = write_lora(tmp_path / "low-distill.safetensors", "comfy", seed=4, dtype="bfloat16")
    recipe = DistillRecipe(TINY_DISTILL, low_noise_lora=str(low))
    moved = dataclasses.replace(own_a14b, path=tmp_path / "moved")
    prepared = Renderer(moved, work_dir=tmp_path, loras=LoraConfig(library_dir, distill=recipe)).prepare(
        small(preset="turbo"))
    assert [(a.file.label, a.expert) for a in prepared.loras] == [(TINY_DISTILL, "high_noise"),
                                                                  (str(low), "low_noise")]


def test_a_served_model_is_read_once_and_an_unreadable_one_is_named(tiny_model_dir, library_dir, tmp_path):
    config = LoraConfig(library_dir, tmp_path / "cache", distill=DistillRecipe(TINY_DISTILL))
    turbo = small(preset="turbo", loras=[{"name": TINY_STYLE}])
    served = tmp_path / "served"
    shutil.copytree(tiny_model_dir, served)
    check_loras(turbo, "tiny", str(served), config, None)
    (served / "model_index.json").unlink()
    for shard in (served / "transformer").glob("*.safetensors"):
        shard.unlink()
    check_loras(turbo, "tiny", str(served), config, None)  # a served directory's files are read once

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model_index.json").unlink()
    with pytest.raises(ModelUnreadable) as err:
        check_loras(turbo, "tiny", str(broken), config, None)
    assert err.value.status == 503 and "model_index.json" in err.value.reason and str(broken) in err.value.reason
    assert str(tmp_path) not in err.value.detail  # a client is not shown the server's paths
    settings = ServeSettings(model=[f"broken={broken}"], data_dir=tmp_path / "data", lora_dir=library_dir,
                             distill_lora=TINY_DISTILL, turbo_for=["fal:regular"])
    with pytest.raises(ValueError, match="--turbo-for: model broken: .*model_index.json"):
        check_turbo_for(settings)

    odd = tmp_path / "odd"  # a transformer shard with a dtype the header reader does not know
    shutil.copytree(tiny_model_dir, odd)
    header = json.dumps({"w.weight": {"dtype": "Q3", "shape": [2, 2], "data_offsets": [0, 4]}}).encode()
    (odd / "transformer" / "extra.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    with pytest.raises(ModelUnreadable) as err:
        check_loras(small(loras=[{"name": TINY_STYLE}]), "tiny", str(odd), config, None)
    assert "unknown dtype 'Q3'" in err.value.reason
    with pytest.raises(ModelUnreadable) as err:
        library_listing(LoraLibrary(library_dir), None, {"odd": str(odd)})
    assert "unknown dtype 'Q3'" in err.value.reason


def test_header_reader_knows_every_safetensors_dtype(tmp_path):
    def write(dtype: str, shape: list[int], nbytes: int) -> Path:
        header = json.dumps({"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}}).encode()
        path = tmp_path / f"{dtype}-{nbytes}.safetensors"
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(nbytes))
        return path

    for dtype, shape, nbytes in (("F8_E8M0", [4], 4), ("F4", [2, 3], 3), ("F6_E2M3", [4], 3), ("F6_E3M2", [4], 3),
                                 ("C64", [2], 16)):
        assert read_header(write(dtype, shape, nbytes))["t"] == TensorInfo(dtype, tuple(shape))
    with pytest.raises(HeaderError, match="bytes for shape"):  # 3 four-bit values do not fill whole bytes
        read_header(write("F4", [3], 2))


# --- a sequence-parallel group -------------------------------------------------------------------------------

def test_two_rank_group_applies_the_same_loras(tiny_model_dir, own_tiny, library_dir, tmp_path):
    config = LoraConfig(library_dir)
    request = small(loras=[{"name": f"{TINY_STYLE}-comfy", "scale": 1.0}])
    single = Renderer(own_tiny, work_dir=tmp_path / "one", loras=config).render(request).frames
    with render_group(tiny_model_dir, ["cpu", "cpu"]) as group:
        renderer = GroupRenderer(group, work_dir=tmp_path / "group", loras=config)
        styled = renderer.render(request)
        plain = renderer.render(small())
    assert styled.metrics["loras"][0]["lora"] == f"{TINY_STYLE}-comfy" and styled.metrics["sp_group_size"] == 2
    assert np.abs(styled.frames - single).max() < 1e-4  # sharded attention: float rounding only
    assert np.abs(styled.frames - plain.frames).max() > 1e-3
