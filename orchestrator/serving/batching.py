"""Server-side batching: concurrent requests for one model version and signature run as one call.

A request of ``n`` rows is queued; a batch thread takes the oldest request, then keeps adding queued
requests whose non-batch shapes match until ``max_batch_size`` rows are gathered or
``batch_timeout_micros`` have passed since the oldest was queued. The inputs are concatenated along the
first axis, the signature runs once, and each request gets its own rows of every output back.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Deque, Dict, List

import numpy as np

from orchestrator.serving.status import ErrorCode, RequestError

log = logging.getLogger("tfscale.serving")

Arrays = Dict[str, np.ndarray]


class _Task:
    __slots__ = ("inputs", "rows", "key", "enqueued", "future")

    def __init__(self, inputs: Arrays, rows: int):
        self.inputs = inputs
        self.rows = rows
        self.key = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(inputs.items()))
        self.enqueued = time.monotonic()
        self.future: Future = Future()


class Batcher:
    """Merges concurrent calls of ``run`` (inputs with a leading batch axis -> outputs likewise)."""

    def __init__(self, run: Callable[[Arrays], Arrays], *, max_batch_size: int, batch_timeout_micros: int,
                 num_batch_threads: int, max_enqueued_batches: int, name: str = ""):
        self._run = run
        self.max_batch_size = int(max_batch_size)
        self.timeout = batch_timeout_micros / 1e6
        self.max_queued_rows = int(max_enqueued_batches) * self.max_batch_size
        self.name = name
        self._queue: Deque[_Task] = collections.deque()
        self._queued_rows = 0
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"batch-{name}-{i}", daemon=True)
                         for i in range(int(num_batch_threads))]
        for t in self._threads:
            t.start()

    def submit(self, inputs: Arrays, rows: int) -> Arrays:
        """Run ``inputs`` (``rows`` rows) as part of a batch; blocks until its outputs are ready."""
        if rows > self.max_batch_size or rows == 0:
            # A request that alone exceeds a batch runs by itself instead of being refused.
            return self._run(inputs)
        task = _Task(inputs, rows)
        with self._cv:
            if self._closed:
                raise RequestError(ErrorCode.UNAVAILABLE, f"Model version {self.name} is unloading; retry.")
            if self._queued_rows + rows > self.max_queued_rows:
                raise RequestError(ErrorCode.UNAVAILABLE, f"The batch queue of {self.name} is full "
                                   f"({self._queued_rows} rows waiting); retry later or raise max_enqueued_batches.")
            self._queue.append(task)
            self._queued_rows += rows
            self._cv.notify()
        return task.future.result()

    def close(self) -> None:
        """Finish what is queued, then stop the batch threads."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def _take_batch(self) -> List[_Task]:
        with self._cv:
            while not self._queue:
                if self._closed:
                    return []
                self._cv.wait()
            first = self._queue[0]
            deadline = first.enqueued + self.timeout
            while True:
                rows = 0
                for t in self._queue:
                    if t.key == first.key:
                        rows += t.rows
                remaining = deadline - time.monotonic()
                if rows >= self.max_batch_size or remaining <= 0 or self._closed:
                    break
                self._cv.wait(remaining)
            batch, kept, rows = [], collections.deque(), 0
            for t in self._queue:
                if t.key == first.key and rows + t.rows <= self.max_batch_size:
                    batch.append(t)
                    rows += t.rows
                else:
                    kept.append(t)
            self._queue = kept
            self._queued_rows -= rows
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            try:
                if len(batch) == 1:
                    batch[0].future.set_result(self._run(batch[0].inputs))
                    continue
                merged = {k: np.concatenate([t.inputs[k] for t in batch]) for k in batch[0].inputs}
                outputs = self._run(merged)
                start = 0
                for t in batch:
                    t.future.set_result({k: v[start:start + t.rows] for k, v in outputs.items()})
                    start += t.rows
            except BaseException as e:  # every waiting request must get an answer, even on failure
                for t in batch:
                    if not t.future.done():
                        t.future.set_exception(e)
