"""Micro-batching of concurrent requests onto a few worker threads.

Callers submit work with a deadline and wait on a future; each worker takes the oldest job, waits up to
``max_wait_s`` for up to ``max_batch - 1`` more, and runs them as ONE batch (one context-tower forward, one
index search per filter, one ranker forward), which is cheaper per request than one by one as soon as
requests arrive together. Jobs whose caller already gave up (deadline passed, future cancelled) are
dropped before they cost anything. ``max_batch = 1`` is a plain thread pool.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["Job", "MicroBatcher"]

P = TypeVar("P")


@dataclass
class Job(Generic[P]):
    """One submitted piece of work; the batch runner sets ``future``'s result or exception."""

    payload: P
    deadline: float  # time.monotonic() after which nobody waits for the result
    future: Future[Any] = field(default_factory=Future)


class MicroBatcher(Generic[P]):
    """Runs ``run_batch(jobs)`` on ``workers`` threads over batches of at most ``max_batch`` jobs."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Job[P]]], None],
        *,
        workers: int,
        max_batch: int,
        max_wait_s: float,
        name: str = "monorec-serve",
    ) -> None:
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.SimpleQueue[Job[P] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, payload: P, deadline: float) -> Future[Any]:
        job = Job(payload, deadline)
        self._queue.put(job)
        return job.future

    def _take(self, job: Job[P], batch: list[Job[P]]) -> None:
        # drop work nobody waits for; set_running_... also makes a later cancel() by the caller a no-op
        if job.deadline > time.monotonic() and job.future.set_running_or_notify_cancel():
            batch.append(job)
        elif not job.future.done() and job.future.set_running_or_notify_cancel():
            job.future.set_exception(TimeoutError("the deadline passed while queued"))

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch: list[Job[P]] = []
            self._take(first, batch)
            closing = False
            until = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    remaining = until - time.monotonic()
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    closing = True
                    break
                self._take(nxt, batch)
            if batch:
                try:
                    self._run_batch(batch)
                except BaseException as exc:  # the runner failed as a whole: every caller learns why
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(exc)
            if closing:
                return

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)
