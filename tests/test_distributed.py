"""A 2-rank gloo render group: same frames as one process (step-cache presets included, with the same skipped
steps), cancel keeps the ranks, a dead rank restarts the group, only rank 0 loads the text encoder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import solid_image
from vace.pipelines.engine.group import GroupFailed, GroupRenderer, GroupSpec, RenderGroup
from vace.pipelines.engine.render import RenderCancelled, Renderer
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.parallel.plan import parse_gpus, plan_groups

LEVELS = 3  # allowed max difference in 8-bit levels between the group's frames and one process's


@pytest.fixture(scope="module")
def group(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("group")
    with RenderGroup(GroupSpec(str(tiny_model_dir), ("cpu", "cpu"), "ulysses"), work_dir=work) as g:
        g.wait_ready(timeout=300)
        yield g


@pytest.fixture(scope="module")
def reference_png(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("refs") / "ref.png"
    solid_image(40, 40, (200, 60, 30)).save(path)
    return str(path)


def job(reference_png: str, **kw) -> GenerationRequest:
    # 80x48, 13 frames + 1 reference image: 5 latent frames of 3x5 patches = 75 tokens (odd, shards 38 + 37)
    base = dict(prompt="a red fox in the snow", width=80, height=48, num_frames=13, steps=3, seed=11,
                reference_images=[reference_png])
    base.update(kw)
    return GenerationRequest(**base)


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
def test_group_render_matches_one_process(mode, group, tiny_model_dir, renderer, reference_png, tmp_path):
    prepared = renderer.prepare(job(reference_png))
    single = renderer.render(prepared, output_path=tmp_path / "single.mp4")
    seen: list[tuple[int, int]] = []
    if mode == "ulysses":
        sharded = GroupRenderer(group, work_dir=tmp_path / "g").render(
            prepared, on_progress=lambda i, n: seen.append((i, n)), output_path=tmp_path / "group.mp4")
    else:
        with RenderGroup(GroupSpec(str(tiny_model_dir), ("cpu", "cpu"), "ring"), work_dir=tmp_path / "r") as ring:
            sharded = GroupRenderer(ring).render(prepared, on_progress=lambda i, n: seen.append((i, n)),
                                                 output_path=tmp_path / "group.mp4")
    levels = np.abs(sharded.frames - single.frames).max() * 255
    print(f"2-rank {mode} group vs one process: max |diff| {levels:.2e} 8-bit levels "
          f"(frames {sharded.frames.shape})")
    assert sharded.frames.shape == single.frames.shape == (13, 48, 80, 3)
    assert levels <= LEVELS
    assert sharded.path == tmp_path / "group.mp4" and sharded.path.stat().st_size > 0
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert sharded.metrics["sp_group_size"] == 2 and sharded.metrics["sp_mode"] == mode
    assert sharded.seed == single.seed


@pytest.fixture()
def ring_group(tiny_model_dir: Path, tmp_path: Path):
    with RenderGroup(GroupSpec(str(tiny_model_dir), ("cpu", "cpu"), "ring"), work_dir=tmp_path / "ring") as g:
        g.wait_ready(timeout=300)
        yield g


@pytest.fixture(scope="module")
def calibrated_group(calibrated_tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with RenderGroup(GroupSpec(str(calibrated_tiny_dir), ("cpu", "cpu"), "ulysses"),
                     work_dir=tmp_path_factory.mktemp("calibrated-group")) as g:
        g.wait_ready(timeout=300)
        yield g


@pytest.mark.parametrize(("cache", "mode"), [("magcache", "ulysses"), ("fbcache", "ulysses"), ("fbcache", "ring")])
def test_group_step_cache_skips_the_same_steps_as_one_process(cache, mode, request, reference_png, tmp_path):
    """Preset "regular": MagCache on the calibrated model, First Block Cache (group-wide change) without."""
    if mode == "ring":
        group = request.getfixturevalue("ring_group")
        renderer = request.getfixturevalue("renderer")
    elif cache == "magcache":
        from vace.pipelines.engine.loading import load_pipeline

        group = request.getfixturevalue("calibrated_group")
        renderer = Renderer(load_pipeline(request.getfixturevalue("calibrated_tiny_dir"), device="cpu"),
                            work_dir=tmp_path / "one")
    else:
        group, renderer = request.getfixturevalue("group"), request.getfixturevalue("renderer")
    prepared = renderer.prepare(job(reference_png, steps=10, preset="regular"))
    single = renderer.render(prepared, output_path=tmp_path / "single.mp4")
    sharded = GroupRenderer(group, work_dir=tmp_path / "g").render(prepared, output_path=tmp_path / "group.mp4")
    levels = np.abs(sharded.frames - single.frames).max() * 255
    counts = {k: single.metrics[k] for k in ("transformer_evaluations", "transformer_evaluations_skipped",
                                             "skipped_steps")}
    print(f"preset regular ({cache}), 2-rank {mode} group vs one process: {counts}; "
          f"max |diff| {levels:.2e} 8-bit levels")
    assert single.metrics["step_cache"] == sharded.metrics["step_cache"] == cache
    assert single.metrics["transformer_evaluations_skipped"] > 0
    assert {k: sharded.metrics[k] for k in counts} == counts
    assert "preset_requested" not in sharded.metrics
    assert "not applied" not in sharded.metrics.get("step_cache_note", "")
    assert levels <= LEVELS


def test_only_rank_0_loads_the_text_encoder(group, tiny_model_dir):
    from vace.pipelines.engine.loading import load_pipeline

    assert "text_encoder" in group.components[0]
    assert "text_encoder" not in group.components[1] and "transformer" in group.components[1]
    model = load_pipeline(tiny_model_dir, device="cpu", text_encoder=False)
    assert model.pipeline.text_encoder is None and model.pipeline.tokenizer is not None


@pytest.mark.parametrize("preset", ["none", "regular"])
def test_cancel_mid_run_keeps_every_rank_ready(preset, group, reference_png, tmp_path):
    renderer = GroupRenderer(group, work_dir=tmp_path)
    pids = group.pids
    steps: list[int] = []
    with pytest.raises(RenderCancelled):
        renderer.render(job(reference_png, steps=8, preset=preset), on_progress=lambda i, n: steps.append(i),
                        should_cancel=lambda: bool(steps) and steps[-1] >= 2)
    assert 2 <= steps[-1] < 8
    assert group.alive and group.pids == pids
    after = renderer.render(job(reference_png, steps=2, seed=5, preset=preset))
    assert after.frames.shape == (13, 48, 80, 3) and group.pids == pids


def test_dead_rank_fails_the_job_clearly_and_the_group_restarts(group, reference_png, tmp_path):
    renderer = GroupRenderer(group, work_dir=tmp_path)
    before = renderer.render(job(reference_png, steps=2, seed=3))
    victim = group.pids[1]
    restarts = group.restarts

    def kill_rank_1(step: int, total: int) -> None:
        if step == 1:
            os.kill(victim, signal.SIGKILL)

    with pytest.raises(GroupFailed, match=r"rank 1 .*died with exit code -9"):
        renderer.render(job(reference_png, steps=4), on_progress=kill_rank_1)
    assert group.restarts == restarts + 1 and victim not in group.pids
    again = renderer.render(job(reference_png, steps=2, seed=3))
    assert group.alive
    assert np.abs(again.frames - before.frames).max() * 255 <= LEVELS


def test_gpu_list_and_groups():
    assert parse_gpus("0,1,2,3") == [0, 1, 2, 3]
    assert parse_gpus("0-3") == [0, 1, 2, 3] and parse_gpus("0-2,6") == [0, 1, 2, 6]
    for bad in ("0,0", "0-2,1", "3-1", "a", "-1", ""):
        with pytest.raises(ValueError):
            parse_gpus(bad)
    gpus = [f"cuda:{i}" for i in range(8)]
    assert plan_groups(gpus, 4) == [tuple(gpus[:4]), tuple(gpus[4:])]
    assert plan_groups(gpus[:2], 1) == [("cuda:0",), ("cuda:1",)]
    assert plan_groups(["cpu"], 2) == [("cpu", "cpu")]
    with pytest.raises(ValueError):
        plan_groups(gpus[:6], 4)
