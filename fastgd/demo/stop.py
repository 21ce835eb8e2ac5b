"""Stopping a run from outside: Ctrl-C (SIGINT) or SIGTERM (``kill``, a job scheduler, a
container stop) asks the training loop to stop at the next step boundary, so the checkpoint it
saves describes whole steps and ``--resume`` continues from there. A second signal stops at once.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self) -> None:
        self.signal: Optional[int] = None  # the signal that asked to stop

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + (self.signal or signal.SIGINT)

    @contextlib.contextmanager
    def catching_signals(self):
        """Handlers for :data:`SIGNALS` while the block runs (only the main thread may set them;
        elsewhere the signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.signal = signum

        previous = {s: signal.signal(s, handler) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, old in previous.items():
                signal.signal(s, old)
