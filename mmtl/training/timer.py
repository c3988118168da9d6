"""Throughput between two log steps (samples per second, the fraction spent waiting for data, MFU), and
the time spent in steps alone over a run, on the wall clock and on this process's CPU clock."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from mmtl.training.flops import mfu


class StepTimer:
    """Counts steps, samples and data wait since the last log; :meth:`lap` reports and restarts.
    A step is timed from :meth:`begin` to :meth:`stepped`, less what ran inside :meth:`aside`."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.data_wait, self.samples, self.steps = 0.0, 0, 0
        self.stepping = 0.0  # seconds inside steps (data fetch + forward/backward/update), over the whole run
        self.stepping_cpu = 0.0  # the same steps' CPU seconds of this process (loader workers not included)
        self._begun = self._aside = (0.0, 0.0)

    def begin(self) -> None:
        """A step begins now (its data fetch first)."""
        self._begun, self._aside = (time.perf_counter(), time.process_time()), (0.0, 0.0)

    @contextmanager
    def aside(self) -> Iterator[None]:
        """One-off work inside the current step (FLOP counting, compiling) that is not step time on either clock."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._aside = (self._aside[0] + time.perf_counter() - wall, self._aside[1] + time.process_time() - cpu)

    def waited(self, samples: int) -> None:
        """The batches of the step begun by :meth:`begin` arrived, holding ``samples`` samples over all ranks."""
        self.data_wait += time.perf_counter() - self._begun[0]
        self.samples += samples

    def stepped(self) -> None:
        """The step begun by :meth:`begin` finished (its optimiser step done)."""
        self.stepping += time.perf_counter() - self._begun[0] - self._aside[0]
        self.stepping_cpu += time.process_time() - self._begun[1] - self._aside[1]
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
