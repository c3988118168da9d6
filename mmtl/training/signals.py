"""Graceful stop: the first SIGTERM/SIGINT asks the loop to checkpoint and exit; a second exits at once."""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType


class GracefulStop:
    """Context manager that turns the first stop signal into a flag the training loop polls.

    Only the main thread may install signal handlers; elsewhere (e.g. inside a test thread) the
    object still works as a flag but installs nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:  # second signal: no more waiting
            sys.stderr.write(f"\nmmtl: second {name}, exiting without a checkpoint\n")
            raise SystemExit(128 + signum)
        self.requested = name
        sys.stderr.write(f"\nmmtl: {name} received, saving a checkpoint after this step (send again to exit now)\n")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
