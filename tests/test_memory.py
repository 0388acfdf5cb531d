"""Memory modes: every offload mode renders what `none` renders (on CPU), and `auto` picks by size."""

from __future__ import annotations

import numpy as np
import pytest

from vace.pipelines.engine.memory import GIB, OFFLOAD_MODES, choose_offload, component_bytes, resolve_offload
from vace.pipelines.job.request import GenerationRequest

# bf16 transformer / text encoder and fp32 VAE of Wan2.1-VACE-14B (17.34 B, 5.68 B and 0.127 B parameters).
SIZES_14B = {"transformer": 34_675_185_792, "text_encoder": 11_361_820_672, "vae": 507_570_124}
SIZES_A14B = {**SIZES_14B, "transformer_2": SIZES_14B["transformer"]}


def _request() -> GenerationRequest:
    return GenerationRequest(prompt="a lighthouse at night", width=64, height=64, num_frames=17, steps=3, seed=5)


@pytest.fixture(scope="module")
def reference_frames(tiny_model, tmp_path_factory):
    from vace.pipelines.engine.render import Renderer

    return Renderer(tiny_model, work_dir=tmp_path_factory.mktemp("ref")).render(_request()).frames


@pytest.mark.parametrize("mode", ["model", "group", "sequential"])
def test_offload_mode_renders_the_same_frames(tiny_model_dir, reference_frames, tmp_path, mode):
    from vace.pipelines.engine.loading import load_pipeline
    from vace.pipelines.engine.render import Renderer

    model = load_pipeline(tiny_model_dir, device="cpu", offload=mode)
    assert model.offload == mode
    assert model.pipeline.vae.use_tiling and model.pipeline.vae.use_slicing
    frames = Renderer(model, work_dir=tmp_path).render(_request()).frames
    np.testing.assert_allclose(frames, reference_frames, atol=1e-5)


def test_auto_choice_by_card_size():
    def free(card_gib: float) -> int:
        return int((card_gib - 1.5) * GIB)  # what a freshly started process sees free

    assert [choose_offload(free(gib), SIZES_14B) for gib in (80, 48, 24)] == ["none", "model", "group"]
    assert choose_offload(free(80), SIZES_A14B) == "model"  # two 35 GB experts do not both fit
    assert choose_offload(2 * GIB, SIZES_14B) == "sequential"


def test_auto_off_cuda_is_none_and_modes_are_checked(tiny_model_dir):
    assert resolve_offload("auto", "cpu", component_bytes(tiny_model_dir)) == "none"
    assert resolve_offload("group", "cpu", {}) == "group"
    with pytest.raises(ValueError):
        resolve_offload("half", "cpu", {})
    assert OFFLOAD_MODES == ("none", "model", "group", "sequential", "auto")


def test_component_bytes_reads_safetensors_headers(tiny_model, tiny_model_dir):
    sizes = component_bytes(tiny_model_dir)
    pipe = tiny_model.pipeline
    assert sizes["transformer"] == 2 * sum(p.numel() for p in pipe.transformer.parameters())
    assert sizes["vae"] == 4 * sum(p.numel() for p in pipe.vae.parameters())
    assert set(sizes) == {"transformer", "text_encoder", "vae"}


@pytest.mark.parametrize("mode", ["model", "group", "sequential"])
def test_offload_modes_work_without_a_text_encoder(tiny_model_dir, mode):
    """Sequence-parallel ranks > 0 load no text encoder; every memory mode must cope."""
    from vace.pipelines.engine.loading import load_pipeline

    model = load_pipeline(tiny_model_dir, device="cpu", offload=mode, text_encoder=False)
    assert model.pipeline.text_encoder is None and model.offload == mode
