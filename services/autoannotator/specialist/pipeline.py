"""The specialist's second pipeline stage: inference on its own thread, behind a bounded queue.

The loop's thread decodes, tokenizes and forms batches (stage one) and submits each batch as an
:class:`InferenceJob`; the :class:`InferenceWorker` runs them one at a time, in submission order,
while stage one works on the next consumed batch. The loop's thread collects finished jobs with
:meth:`InferenceWorker.finished`, again in submission order, and only then sends their
predictions, so the delivery contract stays where it was: a record's offset is committed only
after its prediction is produced and acknowledged (:meth:`in_flight` feeds the commit hold).

At most ``depth`` jobs wait for the worker; :meth:`submit` blocks beyond that (back-pressure:
the loop stops consuming while the accelerator is the bottleneck).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

import numpy as np
from tokenizers import Encoding

from autoannotator.artifacts.engine import InferenceEngine

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Jobs that may wait for the worker besides the one it runs (two stages: one ahead is enough to overlap).
DEFAULT_DEPTH = 2


class InferenceJob(Generic[T]):
    """One batch for one engine: its items (the caller's records), their encodings, and the outcome."""

    def __init__(self, engine: InferenceEngine, items: Sequence[T], encodings: Sequence[Encoding]) -> None:
        self.engine = engine
        self.items = list(items)
        self.encodings = list(encodings)
        self.probs: np.ndarray | None = None
        #: The exception ``engine.infer`` raised (an InferenceError for a batch ORT refused).
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.finished_at = 0.0
        self.done = threading.Event()

    def execute(self) -> None:
        """Run the batch; the outcome (probabilities or the error) is kept on the job, never raised."""
        started = time.perf_counter()
        try:
            self.probs = self.engine.infer(self.encodings)
        except BaseException as exc:  # handed to the loop's thread, which decides (see Specialist._emit)
            self.error = exc
        self.seconds = time.perf_counter() - started
        self.finished_at = time.monotonic()
        self.done.set()


class InferenceWorker(Generic[T]):
    """A thread that executes submitted jobs in order; see the module docstring."""

    def __init__(self, name: str, *, depth: int = DEFAULT_DEPTH) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.name = name
        self._jobs: queue.Queue[InferenceJob[T] | None] = queue.Queue(maxsize=depth)
        # Submitted and not yet collected, in submission order; touched only by the submitting thread.
        self._pending: deque[InferenceJob[T]] = deque()
        self._thread = threading.Thread(target=self._work, name=f"infer-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: InferenceJob[T]) -> None:
        """Queue a job; blocks while ``depth`` jobs are already waiting."""
        if not self._thread.is_alive():
            raise RuntimeError(f"{self.name}: the inference worker has stopped")
        self._pending.append(job)
        self._jobs.put(job)

    def finished(self, *, wait: bool = False) -> list[InferenceJob[T]]:
        """Collect finished jobs in submission order, stopping at the first unfinished one (or all, ``wait``)."""
        collected: list[InferenceJob[T]] = []
        while self._pending:
            head = self._pending[0]
            if wait:
                head.done.wait()
            elif not head.done.is_set():
                break
            collected.append(self._pending.popleft())
        return collected

    def in_flight(self) -> list[T]:
        """Items of the jobs submitted and not yet collected (their commits are held back)."""
        return [item for job in self._pending for item in job.items]

    def __len__(self) -> int:
        return len(self._pending)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the queued jobs and end the thread (collect their results with ``finished`` first)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout_s)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job.execute()
