"""Device planning for sequence parallel: which GPUs (`--gpus`) form which groups (`--sequence-parallel`). Pure: no
torch, so the API process plans its workers without loading the engine."""

from __future__ import annotations


def parse_gpus(spec: str) -> list[int]:
    """'0,1,2,3' or '0-3' (ranges and lists mix: '0-3,6') -> [0, 1, 2, 3]; duplicates and negatives rejected."""
    usage = f"--gpus takes GPU indices such as 0,1,2,3 or 0-3, got {spec!r}"
    ids: list[int] = []
    try:
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            first, dash, last = part.partition("-")
            if dash and first:
                lo, hi = int(first), int(last)
                if hi < lo:
                    raise ValueError(usage)
                ids.extend(range(lo, hi + 1))
            else:
                ids.append(int(part))
    except ValueError:
        raise ValueError(usage) from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise ValueError(f"--gpus needs distinct non-negative GPU indices, got {spec!r}")
    return ids


def plan_groups(devices: list[str], sequence_parallel: int) -> list[tuple[str, ...]]:
    """Split devices into consecutive groups of `sequence_parallel` (1 = one independent worker each).
    On CPU (device 'cpu') a group is `sequence_parallel` processes sharing the CPU."""
    if sequence_parallel < 1:
        raise ValueError(f"--sequence-parallel must be at least 1, got {sequence_parallel}")
    if devices == ["cpu"]:
        return [("cpu",) * sequence_parallel]
    if len(devices) % sequence_parallel:
        raise ValueError(f"{len(devices)} GPUs cannot be split into groups of {sequence_parallel}")
    return [tuple(devices[i:i + sequence_parallel]) for i in range(0, len(devices), sequence_parallel)]
