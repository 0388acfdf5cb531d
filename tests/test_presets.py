"""Presets and the VACE step cache on the tiny model: determinism, counts, exactness, no leaks between jobs.

The tiny model's calibrated magnitude ratios are all close to 1 (random weights change little from step
to step), so MagCache's error budget (0.12 / 0.24) never binds on it and the levels differ by their
max-skip K (2 vs 6) and retention: with 10 steps "low" computes steps 0, 1, 4, 7 and "regular" 0, 1, 8
of each pass. That is the deliberate operating point these tests pin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vace.pipelines.acceleration.presets import (
    PRESETS,
    SPEED_MODES,
    get_preset,
    parse_turbo_for,
    preset_for_acceleration,
    preset_for_speed_mode,
)
from vace.pipelines.job.request import GenerationRequest, RequestError

STEPS = 10


def _request(preset: str = "none", seed: int = 7, prompt: str = "a red fox in snow") -> GenerationRequest:
    return GenerationRequest(prompt=prompt, width=64, height=64, num_frames=17, steps=STEPS, seed=seed,
                             preset=preset)


@pytest.fixture(scope="module")
def calibrated_model(calibrated_tiny_dir: Path):
    """The tiny model with MagCache ratios beside it (conftest's calibrate() run), loaded."""
    from vace.pipelines.acceleration.calibration import load_calibration
    from vace.pipelines.engine.loading import load_pipeline

    ratios = load_calibration(calibrated_tiny_dir)["ratios"]
    assert ratios.keys() == {"cond", "uncond"} and len(ratios["cond"]) == STEPS
    return load_pipeline(calibrated_tiny_dir, device="cpu")


def test_table_and_hosted_names():
    assert set(PRESETS) == {"none", "low", "regular", "turbo"}
    assert [preset_for_speed_mode(s) for s in SPEED_MODES] == ["none", "low", "regular"]
    assert preset_for_acceleration("regular") == "regular"
    assert get_preset("Juiced 🔥 (more speed)").name == "low"
    assert get_preset("low").mag_max_skip_steps < get_preset("regular").mag_max_skip_steps
    with pytest.raises(RequestError) as err:
        preset_for_speed_mode("Mildly Juiced")
    assert err.value.field == "speed_mode"
    with pytest.raises(RequestError):
        preset_for_acceleration("high")
    with pytest.raises(RequestError):
        get_preset("ludicrous")


def test_operator_maps_hosted_speeds_onto_turbo():
    extra = "Extra Juiced 🚀 (even more speed)"
    turbo = parse_turbo_for([f"replicate:{extra}", "fal:regular", "fal:low"])
    assert turbo == {"replicate": frozenset({extra}), "fal": frozenset({"regular", "low"})}
    assert [preset_for_speed_mode(s, turbo) for s in SPEED_MODES] == ["none", "low", "turbo"]
    assert [preset_for_acceleration(a, turbo) for a in ("none", "low", "regular")] == ["none", "turbo", "turbo"]
    assert preset_for_acceleration("regular", parse_turbo_for([f"replicate:{extra}"])) == "regular"
    assert preset_for_acceleration("regular") == "regular" and parse_turbo_for([]) == {}  # default: no mapping
    for entry, words in (("wavespeed:fast", "one of replicate, fal"), ("fal", "DIALECT:VALUE"),
                         ("fal:high", "fal has no value 'high'"), ("replicate:Extra Juiced", "has no value")):
        with pytest.raises(ValueError, match=words):
            parse_turbo_for([entry])
    assert get_preset("turbo").distill and not get_preset("turbo").step_cache


def test_none_is_bit_identical_to_no_hooks(renderer, tiny_model):
    import torch

    from vace.pipelines.acceleration.step_cache import HOOK_NAME
    from vace.pipelines.engine.schedulers import make_scheduler

    result = renderer.render(_request("none"))
    assert result.metrics["preset"] == "none" and result.metrics["step_cache"] == "none"
    assert result.metrics["transformer_evaluations"] == 2 * STEPS
    assert result.metrics["transformer_evaluations_skipped"] == 0
    # rendering straight through diffusers, with no acceleration code involved at all
    renderer.pipe.scheduler = make_scheduler("unipc", _request().shift, 1000)
    with torch.inference_mode():
        plain = renderer.pipe(prompt=_request().prompt, negative_prompt=_request().negative_prompt,
                              **renderer.pipeline_kwargs(renderer.prepare(_request("none")))).frames
    assert np.array_equal(renderer.decode(plain, 0), result.frames)
    for module in tiny_model.pipeline.transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        assert registry is None or HOOK_NAME not in registry.hooks


@pytest.mark.parametrize("preset", ["low", "regular"])
def test_presets_deterministic_and_counted(calibrated_model, tmp_path, preset):
    from vace.pipelines.engine.render import Renderer

    renderer = Renderer(calibrated_model, work_dir=tmp_path)
    first, second = renderer.render(_request(preset)), renderer.render(_request(preset))
    assert np.array_equal(first.frames, second.frames)
    assert first.metrics == second.metrics
    assert first.metrics["preset"] == preset and first.metrics["step_cache"] == "magcache"
    total = first.metrics["transformer_evaluations"] + first.metrics["transformer_evaluations_skipped"]
    assert total == 2 * STEPS


def test_stronger_preset_runs_strictly_fewer_evaluations(calibrated_model, tmp_path):
    from vace.pipelines.engine.render import Renderer

    renderer = Renderer(calibrated_model, work_dir=tmp_path)
    done = {p: renderer.render(_request(p)).metrics["transformer_evaluations"] for p in ("none", "low", "regular")}
    assert done["none"] > done["low"] > done["regular"]
    assert done == {"none": 20, "low": 8, "regular": 6}  # see the module docstring


def test_cache_does_not_leak_between_jobs(calibrated_model, tmp_path):
    from vace.pipelines.engine.render import Renderer

    renderer = Renderer(calibrated_model, work_dir=tmp_path)
    alone_a = renderer.render(_request("regular", seed=1, prompt="a boat")).frames
    alone_b = renderer.render(_request("regular", seed=2, prompt="a tree")).frames
    fresh = Renderer(calibrated_model, work_dir=tmp_path / "2")
    fresh.render(_request("regular", seed=2, prompt="a tree"))
    again_a = fresh.render(_request("regular", seed=1, prompt="a boat")).frames
    assert np.array_equal(alone_a, again_a)
    assert not np.array_equal(alone_a, alone_b)


def test_uncalibrated_model_falls_back_and_says_so(renderer):
    result = renderer.render(_request("low"))
    assert result.metrics["step_cache"] == "fbcache"
    assert "vace calibrate" in result.metrics["step_cache_note"]
    assert result.metrics["transformer_evaluations"] + result.metrics["transformer_evaluations_skipped"] == 20


def test_first_block_cache_threshold_orders_skips(tiny_model, tmp_path):
    """Threshold 0 never skips (and equals the unhooked output); a huge one skips all it may."""
    from vace.pipelines.acceleration.step_cache import CachePolicy, StepCache
    from vace.pipelines.engine.render import Renderer

    renderer = Renderer(tiny_model, work_dir=tmp_path)
    base = renderer.render(_request()).frames
    counts = {}
    for threshold in (0.0, 1e9):
        cache = StepCache(tiny_model.transformers, CachePolicy("fbcache", threshold=threshold, warmup_steps=2),
                          STEPS)
        try:
            frames = renderer.render(_request()).frames
        finally:
            cache.remove()
        counts[threshold] = cache.stats.evaluations
        if threshold == 0.0:
            assert np.array_equal(frames, base)
    assert counts[0.0] == 2 * STEPS
    assert counts[1e9] == 2 * 2  # only the warm-up steps of each pass
    assert np.array_equal(renderer.render(_request()).frames, base)  # hooks removed


def test_two_experts_share_one_cache(tiny_a14b_dir, tmp_path):
    from vace.pipelines.acceleration.step_cache import CachePolicy, StepCache
    from vace.pipelines.engine.loading import load_pipeline
    from vace.pipelines.engine.render import Renderer

    model = load_pipeline(tiny_a14b_dir, device="cpu")
    renderer = Renderer(model, work_dir=tmp_path)
    base = renderer.render(_request()).frames
    cache = StepCache(model.transformers, CachePolicy("fbcache", threshold=0.0), STEPS)
    try:
        frames = renderer.render(_request()).frames
    finally:
        cache.remove()
    assert np.array_equal(frames, base)
    assert cache.stats.evaluations == 2 * STEPS


def test_prompt_embeddings_are_cached(renderer):
    import torch

    renderer.prompt_cache.clear()
    misses = renderer.prompt_cache.misses
    with torch.inference_mode():
        first = renderer.encode_prompt("a lighthouse", "blurry", 5.0)
        second = renderer.encode_prompt("a lighthouse", "blurry", 5.0)
    assert renderer.prompt_cache.misses == misses + 2
    assert first[0] is second[0] and first[1] is second[1]
    with torch.inference_mode():
        direct = renderer.pipe.encode_prompt(prompt="a lighthouse", negative_prompt="blurry",
                                             do_classifier_free_guidance=True, max_sequence_length=512,
                                             device="cpu")
    assert np.array_equal(direct[0].numpy(), first[0].numpy())
    assert np.array_equal(direct[1].numpy(), first[1].numpy())
    assert renderer.encode_prompt("a lighthouse", "blurry", 1.0)[1] is None


def test_prompt_cache_evicts_least_recently_used():
    from vace.pipelines.engine.prompt_cache import PromptEmbeddingCache

    calls = []
    cache = PromptEmbeddingCache(lambda text: calls.append(text) or text.upper(), capacity=2)
    assert cache.get("a") == "A" and cache.get("b") == "B"
    cache.get("a")  # a is now the most recent
    cache.get("c")  # evicts b
    assert "b" not in cache and "a" in cache and "c" in cache
    cache.get("b")
    assert calls == ["a", "b", "c", "b"]


def test_skipped_step_on_an_unchanged_input_reproduces_the_computed_output(tiny_model):
    """The VACE hints are inside the cached residual once: a skip must not add them again (diffusers'
    block-level MagCache/FBCache hooks do, on WanVACETransformer3DModel)."""
    import torch

    from vace.pipelines.acceleration.step_cache import CachePolicy, StepCache

    transformer = tiny_model.pipeline.transformer
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 5, 8, 8, generator=generator), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 512, 32, generator=generator),
                  control_hidden_states=torch.randn(1, 96, 5, 8, 8, generator=generator), return_dict=False)
    policy = CachePolicy("magcache", threshold=10.0, max_skip_steps=5, warmup_steps=1,
                         mag_ratios={"cond": [1.0, 1.0]})
    with torch.no_grad():
        reference = transformer(**inputs)[0]
        cache = StepCache([transformer], policy, num_steps=2)
        try:
            outputs = []
            for _ in range(2):
                with transformer.cache_context("cond"):
                    outputs.append(transformer(**inputs)[0])
        finally:
            cache.remove()
    assert cache.stats.computed == {"cond": 1} and cache.stats.skipped == {"cond": 1}
    assert torch.equal(outputs[0], reference)
    torch.testing.assert_close(outputs[1], reference, atol=1e-5, rtol=0)


def test_prompt_cache_does_not_keep_a_released_pipeline_alive():
    import gc
    import weakref

    from vace.pipelines.engine.prompt_cache import _BY_PIPELINE, prompt_cache_for

    class Pipe:
        pass

    pipe = Pipe()
    cache = prompt_cache_for(pipe)
    assert prompt_cache_for(pipe) is cache
    released = weakref.ref(pipe)
    del pipe, cache
    gc.collect()
    assert released() is None
    assert all(not isinstance(key, Pipe) for key in _BY_PIPELINE.keys())


@pytest.mark.parametrize("content", ["[1, 2]", "null", "3", "not json", '{"version": 1, "ratios": {"cond": []}}',
                                     '{"version": 1, "ratios": {"cond": [1.0, "x"]}}'])
def test_unusable_calibration_file_is_ignored(tmp_path, content):
    from vace.pipelines.acceleration.calibration import calibration_path, load_calibration

    calibration_path(tmp_path).write_text(content)
    assert load_calibration(tmp_path) is None


@pytest.mark.parametrize("args", [["--steps", "0"], ["--sampler", "euler-ish"], ["--frames", "100000"]])
def test_calibrate_command_refuses_a_bad_request_with_a_clear_error(tiny_model_dir, tmp_path, capsys, args):
    import argparse

    from vace.pipelines.bench import calibrate

    parser = argparse.ArgumentParser(prog="vace")
    calibrate.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cal.json"
    parsed = parser.parse_args(["calibrate", "--model", str(tiny_model_dir), "--device", "cpu", "--size", "64*64",
                                "--out", str(out), *args])
    assert parsed.handler(parsed) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()
