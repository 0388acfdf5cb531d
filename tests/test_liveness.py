"""server.worker.liveness: the heartbeat, wake-up and change flag a supervisor shares with its worker process."""

from __future__ import annotations

import multiprocessing
import time

from vace.server.worker.liveness import Liveness


def _worker(liveness: Liveness, beats: int) -> None:
    for _ in range(beats):
        liveness.beat()
    liveness.changed()
    liveness.wait_for_work(60.0)  # until woken
    liveness.changed()


def test_a_spawned_worker_shares_beat_wake_and_change_flag():
    ctx = multiprocessing.get_context("spawn")
    liveness = Liveness(ctx)
    before = time.time()
    process = ctx.Process(target=_worker, args=(liveness, 3))
    process.start()
    try:
        deadline = time.monotonic() + 60
        while not liveness.take_changed() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert liveness.silent_for(now=before) <= 0  # it beat after we started it
        assert process.is_alive()  # waiting for work
        liveness.wake()
        process.join(60)
        assert process.exitcode == 0
        assert liveness.take_changed() and not liveness.take_changed()
    finally:
        process.kill()
