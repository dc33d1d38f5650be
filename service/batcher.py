"""Dynamic batching: concurrent requests share one onnxruntime call, as Triton does.

Requests queue up while a batch is running, so the next batch takes all of them at once:
under load batches grow by themselves, and a lone request never waits for company unless
``max_delay`` asks it to. Inference runs on one dedicated thread, so the event loop never
blocks and onnxruntime's own intra-op threads are not oversubscribed.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from service.errors import InputError
from service.metrics import VersionMetrics


class Predictor(Protocol):
    def predict(self, images: np.ndarray) -> np.ndarray: ...


# Named tuples: made for every batch and request, traced or not, and about half as costly
# to make as frozen dataclasses.
class Batch(NamedTuple):
    """One onnxruntime call, shared by every job in it; wall-clock times, for traces."""

    images: int
    jobs: int
    started_ns: int
    finished_ns: int


class Inference(NamedTuple):
    """One job's answer, and when it queued and ran: a trace is drawn from these after the
    fact, because the batch runs on the batcher's task and thread, outside the request."""

    probabilities: np.ndarray
    queued_ns: int
    batch: Batch


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future[Inference]
    queued_at: float = field(default_factory=time.perf_counter)
    queued_ns: int = field(default_factory=time.time_ns)


class QueueFullError(InputError):
    def __init__(self, queued: int, limit: int):
        super().__init__(
            f"server busy: {queued} images already queued (limit {limit}); retry shortly",
            status=503,
            headers={"Retry-After": "1"},
        )


class Batcher:
    def __init__(
        self,
        model: Predictor,
        metrics: VersionMetrics,
        max_batch_size: int,
        max_delay_s: float,
        max_queued_images: int,
    ):
        self._model = model
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_s
        self._max_queued_images = max_queued_images
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._held: list[_Job] = []
        self._queued_images = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            # The cancelled task keeps its CancelledError, whose traceback holds the frame
            # that holds this batcher: a cycle that would keep the model's session (megabytes
            # of native memory) alive until a full collection. Unloaded models must go now.
            self._worker = None
        self._executor.shutdown(wait=True)

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 28, 28, 1) -> (N, 10), coalesced with whatever else is queued."""
        return (await self.infer(images)).probabilities

    async def infer(self, images: np.ndarray) -> Inference:
        """``predict``, with the times of the job's wait and of the batch it ran in."""
        n = len(images)
        if self._queued_images + n > self._max_queued_images:
            self._metrics.rejected.inc()
            raise QueueFullError(self._queued_images, self._max_queued_images)
        job = _Job(images, asyncio.get_running_loop().create_future())
        self._queued_images += n
        self._metrics.queued_images.set(self._queued_images)
        self._queue.put_nowait(job)
        # A client that disconnects cancels only its own wait: the shared batch runs on.
        return await asyncio.shield(job.future)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            now = time.perf_counter()
            for job in jobs:
                self._metrics.queue_wait.observe(now - job.queued_at)
            batch = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
            try:
                started, started_ns = time.perf_counter(), time.time_ns()
                probabilities = await loop.run_in_executor(
                    self._executor, self._model.predict, batch
                )
                self._metrics.inference.observe(time.perf_counter() - started)
                finished_ns = time.time_ns()
            except Exception as exc:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._queued_images -= len(batch)
                self._metrics.queued_images.set(self._queued_images)
            self._metrics.batch_size.observe(len(batch))
            self._metrics.images.inc(len(batch))
            run = Batch(len(batch), len(jobs), started_ns, finished_ns)
            start = 0
            for job in jobs:
                end = start + len(job.images)
                if not job.future.done():
                    job.future.set_result(Inference(probabilities[start:end], job.queued_ns, run))
                start = end

    async def _collect(self) -> list[_Job]:
        jobs = [self._held.pop() if self._held else await self._queue.get()]
        size = len(jobs[0].images)
        deadline = time.perf_counter() + self._max_delay_s
        while size < self._max_batch_size:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(job.images) > self._max_batch_size:
                # Too big to join: it opens the next batch, ahead of those queued after it.
                self._held.append(job)
                break
            jobs.append(job)
            size += len(job.images)
        return jobs
