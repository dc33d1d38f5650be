"""Dynamic batching: concurrent requests share one onnxruntime call, as Triton does.

Requests queue up while a batch is running, so the next batch takes all of them at once:
under load batches grow by themselves, and a lone request never waits for company unless
``max_delay`` asks it to. The batching loop lives on its own inference thread, so the event
loop never blocks, each request costs one hand-over each way and nothing more, and
onnxruntime's own intra-op threads are not oversubscribed.
"""

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.errors import InputError
from service.metrics import Metrics


class Predictor(Protocol):
    def predict(self, images: np.ndarray) -> np.ndarray: ...


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)


class QueueFullError(InputError):
    def __init__(self, queued: int, limit: int):
        super().__init__(
            f"server busy: {queued} images already queued (limit {limit}); retry shortly",
            status=503,
            headers={"Retry-After": "1"},
        )


_STOP = None  # put on the queue to end the inference thread


class Batcher:
    def __init__(
        self,
        model: Predictor,
        metrics: Metrics,
        max_batch_size: int,
        max_delay_s: float,
        max_queued_images: int,
    ):
        self._model = model
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_s
        self._max_queued_images = max_queued_images
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Only the event loop's thread touches the count: it is raised when a request
        # queues and lowered in the callback that hands its answer back.
        self._queued_images = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(_STOP)
            await asyncio.to_thread(self._thread.join)

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 28, 28, 1) -> (N, 10), coalesced with whatever else is queued."""
        n = len(images)
        if self._queued_images + n > self._max_queued_images:
            self._metrics.rejected.inc()
            raise QueueFullError(self._queued_images, self._max_queued_images)
        job = _Job(images, asyncio.get_running_loop().create_future())
        self._queued_images += n
        self._metrics.queued_images.set(self._queued_images)
        self._jobs.put(job)
        # A client that disconnects cancels only its own wait: the shared batch runs on.
        return await asyncio.shield(job.future)

    def _run(self) -> None:
        held: list[_Job] = []
        while True:
            jobs = self._collect(held)
            if not jobs:
                return
            started = time.perf_counter()
            for job in jobs:
                self._metrics.queue_wait.observe(started - job.queued_at)
            batch = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
            try:
                probabilities = self._model.predict(batch)
            except Exception as exc:
                self._hand_back(jobs, None, exc)
                continue
            self._metrics.inference.observe(time.perf_counter() - started)
            self._metrics.batch_size.observe(len(batch))
            self._metrics.images.inc(len(batch))
            self._hand_back(jobs, probabilities, None)

    def _collect(self, held: list[_Job]) -> list[_Job]:
        """The next batch: the held-over job or the next queued one, then what else fits."""
        first = held.pop() if held else self._jobs.get()
        if first is _STOP:
            return []
        jobs, size = [first], len(first.images)
        deadline = time.perf_counter() + self._max_delay_s
        while size < self._max_batch_size:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = self._jobs.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is _STOP:
                self._jobs.put(_STOP)  # finish this batch, then stop
                break
            if size + len(job.images) > self._max_batch_size:
                # Too big to join: it opens the next batch, ahead of those queued after it.
                held.append(job)
                break
            jobs.append(job)
            size += len(job.images)
        return jobs

    def _hand_back(
        self, jobs: list[_Job], probabilities: np.ndarray | None, error: Exception | None
    ) -> None:
        def deliver() -> None:
            start = 0
            for job in jobs:
                end = start + len(job.images)
                self._queued_images -= len(job.images)
                if not job.future.done():
                    if error is not None:
                        job.future.set_exception(error)
                    else:
                        assert probabilities is not None
                        job.future.set_result(probabilities[start:end])
                start = end
            self._metrics.queued_images.set(self._queued_images)

        # One wake-up of the event loop per batch, not per request.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(deliver)
