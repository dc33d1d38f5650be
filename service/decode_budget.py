"""Admission for image decoding: a cap on decodes at once and on the memory they may take.

A worker decodes at most ``concurrency`` large images at a time (more only queue for the
same cores, and each holds several times its pixels while it is made MNIST-like), and the
pixels admitted, decoding or queued, may not add up to more than ``memory_bytes``: a
request that would go over is refused with 503 at once, so that a burst of big images costs
a retry, never a resident set that grows with the burst.

Small images (``SMALL_IMAGE_BYTES`` decoded: a cropped digit, a canvas drawing) take no
slot: their decode is many short calls that each take the GIL, so one a core leaves the
cores idle, and each holds a few megabytes at most. Up to ``SMALL_PER_SLOT`` a slot run.

Decoding runs on the budget's own threads, ``SMALL_PER_SLOT`` a slot: a hand-over there
costs about a third of one through Starlette's shared thread pool (anyio's capacity
limiter and worker bookkeeping), and image uploads take two hand-overs a request.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar, TypeVarTuple

from service.errors import RETRY_AFTER_S, InputError

# Decoded size up to which an image takes no decode slot: 500x500 RGBA, 1000x1000 grey.
SMALL_IMAGE_BYTES = 1_000_000
# Threads for each slot, so that small images decode several at once per core: PNG digits
# at c=32 ran 1.43x faster with 4 decodes at once per worker than with 1, 1.06x with 8
# than with 4 (bench.ab --payload png --b MNIST_DECODE_CONCURRENCY=4, before this split).
SMALL_PER_SLOT = 4

Args = TypeVarTuple("Args")
Result = TypeVar("Result")


class DecodeBudget:
    def __init__(
        self, concurrency: int, memory_bytes: int, on_refused: Callable[[], object] = lambda: None
    ) -> None:
        if concurrency < 1 or memory_bytes < 1:
            raise ValueError(
                f"concurrency and memory must be positive: {concurrency}, {memory_bytes}"
            )
        self.concurrency = concurrency
        self.memory_bytes = memory_bytes
        self.admitted_bytes = 0
        self._on_refused = on_refused
        self._slots = asyncio.Semaphore(concurrency)
        self._threads = ThreadPoolExecutor(
            concurrency * SMALL_PER_SLOT, thread_name_prefix="decode"
        )

    async def run(self, function: Callable[[*Args], Result], *args: *Args) -> Result:
        """``function`` on a decoding thread: headers read, and pixels decoded once admitted."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, function, *args)

    def close(self) -> None:
        """Once the server stopped taking requests: the decodes running finish first."""
        self._threads.shutdown(wait=True)

    @asynccontextmanager
    async def admit(self, needed_bytes: int) -> AsyncIterator[None]:
        """Hold ``needed_bytes`` of the budget, and a decode slot unless the image is small
        (``SMALL_IMAGE_BYTES``), for the ``async with`` body.

        Raises InputError: 413 when ``needed_bytes`` alone is over the budget (no retry can
        help), 503 with Retry-After when it does not fit beside what is admitted now.
        """
        if needed_bytes > self.memory_bytes:
            raise InputError(
                f"decoding this image takes {needed_bytes:,} bytes, more than this worker's "
                f"decode budget of {self.memory_bytes:,} (MNIST_DECODE_MEMORY_BYTES); "
                "scale the image down (28x28 is what the model reads)",
                status=413,
            )
        if self.admitted_bytes + needed_bytes > self.memory_bytes:
            self._on_refused()
            raise InputError(
                f"too many large images are being decoded: {self.admitted_bytes:,} of "
                f"{self.memory_bytes:,} bytes are taken; retry after {RETRY_AFTER_S} s, or "
                "send smaller images",
                status=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        # Counted before waiting for a slot: what waits is admitted and will be decoded.
        self.admitted_bytes += needed_bytes
        try:
            if needed_bytes <= SMALL_IMAGE_BYTES:
                yield
            else:
                async with self._slots:
                    yield
        finally:
            self.admitted_bytes -= needed_bytes
