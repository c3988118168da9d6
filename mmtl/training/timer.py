"""Throughput between two log steps (samples per second, the fraction spent waiting for data, MFU), and
the time spent in steps alone over a run."""
from __future__ import annotations

import time

from mmtl.training.flops import mfu


class StepTimer:
    """Counts steps, samples and data wait since the last log; :meth:`lap` reports and restarts."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.data_wait, self.samples, self.steps = 0.0, 0, 0
        self.stepping = 0.0  # seconds inside steps (data fetch + forward/backward/update), over the whole run

    def waited(self, since: float, samples: int) -> None:
        """A step's batches arrived (fetched from ``since``) holding ``samples`` samples over all ranks."""
        self.data_wait += time.perf_counter() - since
        self.samples += samples

    def stepped(self, since: float) -> None:
        """One optimiser step finished; it began (with its data fetch) at ``since``."""
        self.stepping += time.perf_counter() - since
        self.steps += 1

    def lap(self, flops_per_step: float, peak: float) -> dict[str, float]:
        """Throughput since the last lap (``peak``: the device's peak FLOP/s, for MFU); restarts the counts."""
        now = time.perf_counter()
        seconds = now - self.last
        out = {"samples_per_s": self.samples / seconds, "data_wait_fraction": self.data_wait / seconds,
               "mfu": mfu(flops_per_step * self.steps, seconds, peak)}
        self.last, self.data_wait, self.samples, self.steps = now, 0.0, 0, 0
        return out

    def elapsed(self) -> float:
        """Seconds since the timer started."""
        return time.perf_counter() - self.started
