"""Sequence-parallel forward of the tiny VACE transformer over 2 gloo processes equals the 1-process forward."""

from __future__ import annotations

import copy
import socket

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

# name -> (latent frames, latent height, latent width); tokens = frames * (h / 2) * (w / 2) with patch (1, 2, 2)
CASES = {
    "text-to-video": (3, 8, 8),  # 48 tokens
    "reference-images": (4, 8, 8),  # 3 video frames + 1 reference frame at the front: 64 tokens
    "odd-token-count": (3, 6, 10),  # 45 tokens: shards of 23 and 22
}
MODES = ("ulysses", "ring")
TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(name: str) -> tuple:
    frames, h, w = CASES[name]
    g = torch.Generator().manual_seed(len(name))
    video = torch.randn(1, 16, frames, h, w, generator=g)
    control = torch.randn(1, 96, frames, h, w, generator=g)
    if name == "reference-images":
        control[:, 16:32, 0] = 0  # the reference frame's "reactive" half is zero, as WanVACEPipeline builds it
    text = torch.randn(1, 7, 32, generator=g)
    return video, control, text


def _forward(model, name: str) -> torch.Tensor:
    video, control, text = _inputs(name)
    scale = torch.tensor([1.0, 0.7])
    return model(video, torch.tensor([700]), text, control_hidden_states=control,
                 control_hidden_states_scale=scale, return_dict=False)[0]


def _rank_main(rank: int, world: int, port: int, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from vace.pipelines.fixtures.tiny_model import build_components
        from vace.pipelines.parallel.sequence import enable_sequence_parallel

        base = build_components(two_experts=False)["transformer"].eval()
        with torch.inference_mode():
            reference = {name: _forward(base, name) for name in CASES}
        for mode in MODES:
            model = copy.deepcopy(base)
            enable_sequence_parallel([model], mode)
            seen: list[int] = []
            model.blocks[1].register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0].shape[1]))
            with torch.inference_mode():
                for name in CASES:
                    out = _forward(model, name)
                    diff = (out - reference[name]).abs().max().item()
                    results.put((rank, mode, name, tuple(out.shape) == tuple(reference[name].shape), diff,
                                 seen[-1]))
    finally:
        dist.barrier()  # no collective may still be in flight when the group is torn down
        dist.destroy_process_group()


def test_sharded_vace_transformer_matches_one_process():
    world = 2
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_rank_main, args=(world, free_port(), results), nprocs=world, join=True)
    rows = []
    while not results.empty():
        rows.append(results.get())
    assert len(rows) == world * len(MODES) * len(CASES)
    for rank, mode, name, same_shape, diff, shard_tokens in sorted(rows):
        frames, h, w = CASES[name]
        tokens = frames * (h // 2) * (w // 2)
        print(f"rank {rank} {mode:8s} {name:17s} tokens {tokens} shard {shard_tokens} max|diff| {diff:.3e}")
        assert same_shape
        assert shard_tokens == (tokens + world - 1 - rank) // world  # each rank really ran on its shard
        assert diff < TOLERANCE
