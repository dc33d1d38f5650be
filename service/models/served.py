"""One served version: its session and its batcher, and when both may be let go."""

import asyncio
import logging

import numpy as np

from service.batcher import Batcher, Inference
from service.models.session import ModelSession

logger = logging.getLogger(__name__)


class ServedVersion:
    """A loaded, self-tested version taking traffic, until it is retired.

    A retired version takes no new requests (the repository no longer hands it out) but
    finishes those in flight; then its batcher stops and its session is dropped.
    """

    def __init__(self, version: int, session: ModelSession, batcher: Batcher):
        self.version = version
        self.name = str(version)
        self.session = session
        self.batcher = batcher
        self.in_flight = 0
        self._retired = False
        self._released: asyncio.Task[None] | None = None

    @property
    def model_id(self) -> str:
        return self.session.model_id

    @property
    def provider(self) -> str:
        """The execution provider that runs this version (onnxruntime's first choice)."""
        return self.session.providers[0]

    async def predict(self, images: np.ndarray) -> np.ndarray:
        return (await self.infer(images)).probabilities

    async def infer(self, images: np.ndarray) -> Inference:
        """``predict``, with the times of its wait and its batch, for the request's trace."""
        # Counted before the first await: the repository cannot release this version
        # between handing it out and the request being in flight on it.
        self.in_flight += 1
        try:
            return await self.batcher.infer(images)
        finally:
            self.in_flight -= 1
            if self._retired and self.in_flight == 0:
                self._release()

    def retire(self) -> None:
        self._retired = True
        if self.in_flight == 0:
            self._release()

    async def released(self) -> None:
        """Wait until the batcher has stopped (after ``retire``)."""
        if self._released is not None:
            await self._released

    def _release(self) -> None:
        if self._released is None:
            self._released = asyncio.get_running_loop().create_task(
                self._stop(), name=f"release-version-{self.version}"
            )

    async def _stop(self) -> None:
        await self.batcher.stop()
        logger.info("version %s released (%s)", self.version, self.model_id)
