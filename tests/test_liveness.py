"""server.worker.liveness: the heartbeat, wake-up and change flag a supervisor shares with its worker process."""

from __future__ import annotations

import multiprocessing
import threading
import time

from vace.server.worker.liveness import Liveness, wait_beating


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


def test_wait_beating_beats_while_it_waits_and_returns_when_woken_or_stopped():
    beats: list[int] = []
    answers = iter([False, False, True])  # woken on the third wait
    wait_beating(lambda _s: next(answers), lambda: beats.append(1), 60.0)
    assert len(beats) == 4  # before each of the three waits, and once woken
    stop = threading.Event()
    stop.set()
    waits: list[float] = []
    wait_beating(waits.append, lambda: beats.append(1), 60.0, stop)
    assert waits == [] and len(beats) == 5  # stopped: one beat, no wait
