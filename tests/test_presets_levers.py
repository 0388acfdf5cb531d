"""GPU lever choices with a fake capability probe (the CUDA-only parts are applied only on CUDA)."""

from __future__ import annotations

import pytest

from vace.pipelines.acceleration.levers import GpuCapabilities, apply_gpu_levers, choose_attention_backend

HOPPER = GpuCapabilities(cuda=True, name="NVIDIA H100 80GB HBM3", capability=(9, 0),
                         packages=frozenset({"flash_attn", "flash_attn_interface"}))


def test_attention_backend_choice():
    assert choose_attention_backend(GpuCapabilities(cuda=False, packages=frozenset({"flash_attn"}))) == "native"
    assert choose_attention_backend(HOPPER) == "_flash_3"
    ampere = GpuCapabilities(cuda=True, name="A100", capability=(8, 0), packages=frozenset({"flash_attn"}))
    assert choose_attention_backend(ampere) == "flash"
    with_sage = GpuCapabilities(cuda=True, name="H100", capability=(9, 0), packages=frozenset({"sageattention"}))
    assert choose_attention_backend(with_sage) == "sage"
    turing = GpuCapabilities(cuda=True, name="T4", capability=(7, 5), packages=frozenset({"flash_attn"}))
    assert choose_attention_backend(turing) == "native"
    assert choose_attention_backend(HOPPER, requested="flash") == "flash"
    assert choose_attention_backend(ampere, requested="_flash_3") == "flash"  # not usable there: automatic
    with pytest.raises(ValueError):
        choose_attention_backend(HOPPER, requested="xformers-ish")


def test_levers_not_applied_off_cuda(tiny_model):
    forwards = [block.forward for block in tiny_model.pipeline.transformer.blocks]
    report = apply_gpu_levers(tiny_model, fp8=True)
    assert report["attention_backend"] == "native" and report["compiled_blocks"] == 0 and report["fp8"] is False
    assert tiny_model.levers is report and report["notes"]
    assert [block.forward for block in tiny_model.pipeline.transformer.blocks] == forwards
