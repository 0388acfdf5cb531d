"""uvicorn's server, with the workers' drain begun the moment a stop signal arrives.

On SIGTERM uvicorn first closes its listener and waits for open connections (up to its graceful timeout: event
streams stay open that long), and only then runs the app's shutdown, where the executor is stopped. A worker that
finished its job in that gap took the next queued one, and the drain waited for that job too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import FrameType

import uvicorn


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, begin_stop: Callable[[], None]):
        super().__init__(config)
        self.begin_stop = begin_stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # This runs as a signal handler, in the thread that may hold the executor's lock: begin elsewhere.
        threading.Thread(target=self.begin_stop, name="begin-stop", daemon=True).start()
        super().handle_exit(sig, frame)
