"""Dynamic batching: requests collected for up to ``max_batch`` requests or ``max_wait_ms`` run as one
forward pass on a single worker thread (the model is never run by two threads at once)."""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from data_pipelines.loader import Example
from mmtl.errors import MMTLError
from mmtl.inference import PredictOptions, Predictor

log = logging.getLogger(__name__)


class ServerBusy(Exception):
    """The batch queue is full: the request is answered 503."""


@dataclass
class _Job:
    example: Example
    options: PredictOptions
    future: Future


class DynamicBatcher:
    """Collects submitted examples into batches and runs them on one worker thread.

    The worker takes the first waiting job, then keeps collecting until it has ``max_batch`` jobs
    or ``max_wait_ms`` has passed; jobs with different options in one collection run as separate
    batches. Under load the queue fills while the model runs, so batches grow with the load.
    """

    _STOP = object()

    def __init__(self, predictor: Predictor, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 512) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise MMTLError(f"--max-batch must be >= 1 and --max-wait-ms >= 0, got {max_batch} and {max_wait_ms}")
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.batches = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._loop, name="mmtl-batcher", daemon=True)
        self._thread.start()

    def submit(self, example: Example, options: PredictOptions) -> Future:
        """Queue one example; the future resolves to ``(PredictionResult, size of the batch it ran in)``.

        Raises ServerBusy when the queue is full."""
        job = _Job(example, options, Future())
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise ServerBusy("server busy: too many requests waiting; retry later") from None
        return job.future

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self.queue.put(self._STOP)
        self._thread.join(timeout=30)

    def _collect(self) -> tuple[list[_Job], bool]:
        first = self.queue.get()
        if first is self._STOP:
            return [], True
        # a job whose request gave up waiting (its future cancelled) is dropped, not run
        jobs = [first] if first.future.set_running_or_notify_cancel() else []
        deadline = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            try:
                remaining = deadline - time.monotonic()
                job = self.queue.get_nowait() if remaining <= 0 else self.queue.get(timeout=remaining)
            except queue.Empty:
                break
            if job is self._STOP:
                return jobs, True
            if job.future.set_running_or_notify_cancel():  # False: its request gave up waiting
                jobs.append(job)
        return jobs, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            jobs, stop = self._collect()
            groups: dict[str, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.options.key(), []).append(job)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[_Job]) -> None:
        try:
            results = self.predictor.run([job.example for job in group], group[0].options)
        except Exception as exc:  # noqa: BLE001 - reported to each waiting request, the worker lives on
            log.exception("prediction batch failed")
            for job in group:
                job.future.set_exception(exc)
            return
        self.batches += 1
        self.requests += len(group)
        for job, result in zip(group, results):
            job.future.set_result((result, len(group)))
