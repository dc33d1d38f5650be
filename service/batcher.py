"""Dynamic batching: concurrent requests share one onnxruntime call, as Triton does.

Requests queue up while a batch is running, so the next batch takes all of them at once:
under load batches grow by themselves, and a lone request never waits for company unless
``max_delay`` asks it to. Inference runs on one dedicated thread, so the event loop is
not held up and onnxruntime's own intra-op threads are not oversubscribed; on the CPU, a
batch of a few images runs on the loop itself, cheaper than the hand-over, and a request
of a few images that is the worker's only one runs at once, in its own task.

Interactive jobs (a few images) and bulk jobs queue apart, each queue with its own limit,
so a flood of big batches fills only its own queue. Batches take interactive jobs first,
but while both queues wait bulk gets a guaranteed share of the images, so neither starves.
A job whose request deadline passes while it waits is answered 504 at once and never run.
"""

import asyncio
import heapq
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from service.deadlines import REQUEST_DEADLINE, DeadlineExceededError
from service.errors import RETRY_AFTER_S, InputError
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
    bulk: bool
    queued_at: float = field(default_factory=time.perf_counter)
    queued_ns: int = field(default_factory=time.time_ns)
    # Set once the batcher took it, or once its deadline dropped it: whoever comes second
    # leaves its images' place in the queue alone.
    settled: bool = False


class QueueFullError(InputError):
    def __init__(self, queued: int, limit: int, kind: str = "inference"):
        super().__init__(
            f"server busy: {queued} images already queued for {kind} (limit {limit}); "
            "retry shortly",
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


# A batch, the future its answer goes to, and the loop that future belongs to.
Item = tuple[np.ndarray, "asyncio.Future[np.ndarray]", asyncio.AbstractEventLoop]


def _settle(
    future: asyncio.Future[np.ndarray], result: np.ndarray | None, error: BaseException | None
) -> None:
    if future.cancelled():  # the batcher stopped while the batch ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class InferenceThread:
    """The one thread batches run on: handed over with one queue put, answered on the loop
    with one call_soon_threadsafe. run_in_executor costs more a batch for what only a pool
    needs (work items, a concurrent Future chained to an asyncio one, thread accounting)."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray]):
        self._predict = predict
        self._batches: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
        self._thread.start()

    def run(self, batch: np.ndarray) -> asyncio.Future[np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._batches.put((batch, future, loop))
        return future

    def stop(self) -> None:
        """Once the batch running, if any, is done: a session must not go while in use."""
        self._batches.put(None)
        self._thread.join()

    def _serve(self) -> None:
        # One call a batch, so that no batch or answer outlives its turn in a local.
        while self._run_one(self._batches.get()):
            pass

    def _run_one(self, item: Item | None) -> bool:
        if item is None:
            return False
        batch, future, loop = item
        try:
            result = self._predict(batch)
        except BaseException as exc:  # handed to the batcher, which answers every job
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)
        return True


# Answered jobs the deadline heap may hold beyond twice the jobs waiting, before they go.
_COMPACT_FLOOR = 1024

# While both queues wait, at least this fraction of the images run are bulk ones.
BULK_SHARE = 0.25


class Batcher:
    def __init__(
        self,
        model: Predictor,
        metrics: VersionMetrics,
        max_batch_size: int,
        max_delay_s: float,
        max_queued_images: int,
        *,
        interactive_max_images: int = 8,
        max_queued_bulk_images: int | None = None,
        inline_max_images: int = 0,
        alone: Callable[[], bool] = lambda: False,
    ):
        self._model = model
        self._inline_max_images = inline_max_images
        # A job this small runs at once in its caller's task when the batcher is idle and
        # its request the only one in progress (``alone``): the batcher would run it alone
        # all the same, after waking up and then waking the caller (JSON c=1 1.09x req/s,
        # c=32 1.01x). Not with a delay to wait for company, which is what the delay is for.
        self._at_once_max_images = inline_max_images if max_delay_s == 0 else 0
        self._alone = alone
        self._idle = False
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_s
        self._interactive_max_images = interactive_max_images
        self._limits = {False: max_queued_images, True: max_queued_bulk_images or max_queued_images}
        self._queues: dict[bool, deque[_Job]] = {False: deque(), True: deque()}
        self._queued = {False: 0, True: 0}
        # Images run per kind while both queues were waiting: what the bulk share is kept by.
        self._served = {False: 0, True: 0}
        self._arrived = asyncio.Event()
        # Deadlines of jobs not answered yet, earliest first, under one timer for the earliest:
        # a TimerHandle made and cancelled per job was about a quarter of its CPU a job. The
        # counter breaks ties, so that jobs themselves are never compared.
        self._deadlines: list[tuple[float, int, _Job]] = []
        self._tiebreak = itertools.count()
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = float("inf")
        self._thread: InferenceThread | None = None  # from start() to stop()
        self._worker: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._thread = InferenceThread(self._model.predict)
        self._worker = asyncio.create_task(self._run(self._thread), name="batcher")

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            # The cancelled task keeps its CancelledError, whose traceback holds the frame
            # that holds this batcher: a cycle that would keep the model's session (megabytes
            # of native memory) alive until a full collection. Unloaded models must go now.
            self._worker = None
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    async def predict(self, images: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """float32 (N, 28, 28, 1) -> (N, 10), coalesced with whatever else is queued."""
        return (await self.infer(images, deadline)).probabilities

    async def infer(self, images: np.ndarray, deadline: float | None = None) -> Inference:
        """``predict``, with the times of the job's wait and of the batch it ran in.

        ``deadline`` (a ``time.perf_counter()`` value; default: the request's, see
        service.deadlines): past it the job is not run and the wait ends in a 504.
        """
        n = len(images)
        bulk = n > self._interactive_max_images
        limit = self._limits[bulk]
        if self._queued[bulk] + n > limit:
            self._metrics.rejected.inc()
            raise QueueFullError(
                self._queued[bulk], limit, "bulk requests" if bulk else "single images"
            )
        if deadline is None:
            deadline = REQUEST_DEADLINE.get()
        arrived = time.perf_counter()
        if deadline is not None and deadline <= arrived:
            self._metrics.expired.inc()
            raise DeadlineExceededError(0.0)
        if (
            n <= self._at_once_max_images
            and self._idle
            and not (self._queued[False] or self._queued[True])
            and self._alone()
        ):
            return self._run_at_once(images)
        loop = asyncio.get_running_loop()
        job = _Job(images, loop.create_future(), bulk, arrived)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, next(self._tiebreak), job))
            if deadline < self._expiry_at:
                self._arm(deadline)
        self._queued[bulk] += n
        self._metrics.queued_images.set(self._queued[False] + self._queued[True])
        self._queues[bulk].append(job)
        self._arrived.set()
        # No shield: a client that disconnects cancels the job's future, which the batcher
        # then leaves alone like any answered one, so the shared batch runs on all the same.
        return await job.future

    def _run_at_once(self, images: np.ndarray) -> Inference:
        queued_ns = time.time_ns()
        self._metrics.queue_wait.observe(0.0)
        started = time.perf_counter()
        probabilities = self._model.predict(images)
        seconds, finished_ns = time.perf_counter() - started, time.time_ns()
        self._ran(len(images), seconds)
        return Inference(probabilities, queued_ns, Batch(len(images), 1, queued_ns, finished_ns))

    def _ran(self, images: int, seconds: float) -> None:
        """Metrics of one onnxruntime call that answered."""
        self._metrics.inference.observe(seconds)
        self._metrics.batch_size.observe(images)
        self._metrics.images.inc(images)

    def _arm(self, deadline: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(
            loop.time() + (deadline - time.perf_counter()), self._expire_due
        )
        self._expiry_at = deadline

    def _expire_due(self) -> None:
        self._expiry, self._expiry_at = None, float("inf")
        now = time.perf_counter()
        while self._deadlines and self._deadlines[0][0] <= now:
            self._expire(heapq.heappop(self._deadlines)[2])
        self._forget_answered()
        if self._deadlines:
            self._arm(self._deadlines[0][0])

    def _forget_answered(self) -> None:
        # Answered jobs leave the heap from its head only; the head is the oldest deadline,
        # which is mostly the oldest job, so the heap holds about the jobs still waiting and
        # not every job of the last timeout's worth.
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].future.done():
            heapq.heappop(deadlines)
        waiting = self._queued[False] + self._queued[True]  # images: at least the jobs
        if len(deadlines) > 2 * waiting + _COMPACT_FLOOR:
            # Answered jobs behind an earlier deadline still waiting: dropped all at once,
            # and only once they are at least half the heap, so that it costs O(1) a job.
            self._deadlines = [entry for entry in deadlines if not entry[2].future.done()]
            heapq.heapify(self._deadlines)

    def _expire(self, job: _Job) -> None:
        if job.future.done():
            return
        self._metrics.expired.inc()
        job.future.set_exception(DeadlineExceededError(time.perf_counter() - job.queued_at))
        # Marked as retrieved: a client that left already would leave it unread, and
        # asyncio would log it as a lost exception. Whoever still waits gets it all the same.
        job.future.exception()
        if not job.settled:
            # Not taken yet: it frees its place now, and the batcher skips it.
            job.settled = True
            self._release(job)

    def _release(self, job: _Job) -> None:
        self._queued[job.bulk] -= len(job.images)
        self._metrics.queued_images.set(self._queued[False] + self._queued[True])

    def _release_all(self, jobs: list[_Job]) -> None:
        # The gauge is set once a batch, not once a job: each set takes a lock (and writes
        # a file, with several workers).
        for job in jobs:
            self._queued[job.bulk] -= len(job.images)
        self._metrics.queued_images.set(self._queued[False] + self._queued[True])

    async def _run(self, thread: InferenceThread) -> None:
        while True:
            self._forget_answered()
            jobs = await self._collect()
            now = time.perf_counter()
            for job in jobs:
                self._metrics.queue_wait.observe(now - job.queued_at)
            batch = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
            try:
                started, started_ns = time.perf_counter(), time.time_ns()
                if len(batch) <= self._inline_max_images:
                    # Tens of microseconds on the loop cost less than the hand-over's two
                    # wake-ups, and a batch this small is what light load makes.
                    probabilities = self._model.predict(batch)
                else:
                    probabilities = await thread.run(batch)
                seconds, finished_ns = time.perf_counter() - started, time.time_ns()
            except Exception as exc:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._release_all(jobs)
            self._ran(len(batch), seconds)
            run = Batch(len(batch), len(jobs), started_ns, finished_ns)
            start = 0
            for job in jobs:
                end = start + len(job.images)
                # Done already: its deadline passed during the run, and it was answered 504.
                if not job.future.done():
                    job.future.set_result(Inference(probabilities[start:end], job.queued_ns, run))
                start = end

    def _head(self, bulk: bool) -> _Job | None:
        """The first job of a queue still waiting, dropping those whose deadline passed."""
        waiting = self._queues[bulk]
        while waiting and waiting[0].settled:
            waiting.popleft()
        return waiting[0] if waiting else None

    def _opening_kind(self) -> bool | None:
        """Which queue opens the next batch (True: bulk), or None when both are empty."""
        interactive, bulk = self._head(False), self._head(True)
        if interactive is None or bulk is None:
            # The share counts only while both wait: a queue idle for a while earns no
            # credit to starve the other with later.
            self._served = {False: 0, True: 0}
            return None if interactive is None and bulk is None else bulk is not None
        # Bulk opens only once running it keeps its share at or under BULK_SHARE: interactive
        # first, and bulk's turn comes after a bounded run of interactive images.
        served = self._served[True] + len(bulk.images)
        return served <= BULK_SHARE * (self._served[False] + served)

    def _take(self, bulk: bool) -> _Job:
        job = self._queues[bulk].popleft()
        job.settled = True
        self._served[bulk] += len(job.images)
        return job

    async def _collect(self) -> list[_Job]:
        while (kind := self._opening_kind()) is None:
            self._arrived.clear()
            self._idle = True
            try:
                await self._arrived.wait()
            finally:
                self._idle = False
        jobs = [self._take(kind)]
        size = len(jobs[0].images)
        deadline = time.perf_counter() + self._max_delay_s
        while size < self._max_batch_size:
            # Interactive jobs fill what room is left first, even in a batch bulk opened.
            kind = self._head(False) is None
            head = self._head(kind)
            if head is None:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
                continue
            if size + len(head.images) > self._max_batch_size:
                # Too big to join: it stays first in its queue and opens a later batch.
                break
            jobs.append(self._take(kind))
            size += len(head.images)
        return jobs
