"""The dynamic batcher, with a recording fake model instead of onnxruntime."""

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import Batcher, QueueFullError
from service.metrics import Metrics


class RecordingModel:
    """Answers each image with its own mean in every column; remembers batch sizes."""

    def __init__(self, release: threading.Event | None = None):
        self.batch_sizes: list[int] = []
        self.release = release

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self.release is not None:
            assert self.release.wait(5), "test never released the model"
        self.batch_sizes.append(len(images))
        return np.repeat(images.reshape(len(images), -1).mean(axis=1, keepdims=True), 10, axis=1)


def images(*values: float) -> np.ndarray:
    return np.stack([np.full((28, 28, 1), v, np.float32) for v in values])


def make_batcher(model: RecordingModel, **overrides: float) -> Batcher:
    options: dict[str, float] = {"max_batch_size": 64, "max_delay_s": 0.0, "max_queued_images": 100}
    options.update(overrides)
    return Batcher(
        model,
        Metrics().of_version(1),
        max_batch_size=int(options["max_batch_size"]),
        max_delay_s=options["max_delay_s"],
        max_queued_images=int(options["max_queued_images"]),
    )


async def test_concurrent_requests_share_one_call_and_get_their_own_rows() -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_delay_s=0.05)
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.predict(images(i / 10, i / 10)) for i in range(8)))
    finally:
        await batcher.stop()
    assert model.batch_sizes == [16]
    for i, result in enumerate(results):
        np.testing.assert_allclose(result, np.full((2, 10), i / 10), rtol=1e-6)


async def test_batches_never_exceed_the_maximum() -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=4, max_delay_s=0.05)
    batcher.start()
    try:
        await asyncio.gather(*(batcher.predict(images(0.5)) for _ in range(10)))
    finally:
        await batcher.stop()
    assert sum(model.batch_sizes) == 10
    assert max(model.batch_sizes) <= 4


async def test_a_request_larger_than_the_maximum_runs_alone() -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=4)
    batcher.start()
    try:
        result = await batcher.predict(images(*[0.1] * 9))
    finally:
        await batcher.stop()
    assert model.batch_sizes == [9]
    assert result.shape == (9, 10)


async def test_full_queue_refuses_with_503_and_retry_after() -> None:
    release = threading.Event()
    model = RecordingModel(release)
    batcher = make_batcher(model, max_queued_images=3)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.predict(images(0.1, 0.2, 0.3)))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError) as refused:
            await batcher.predict(images(0.4))
        assert refused.value.status == 503
        assert refused.value.headers == {"Retry-After": "1"}
        release.set()
        assert (await first).shape == (3, 10)
        # The queue drained: room again.
        assert (await batcher.predict(images(0.4))).shape == (1, 10)
    finally:
        release.set()
        await batcher.stop()


async def test_a_cancelled_request_does_not_break_the_batch_it_joined() -> None:
    release = threading.Event()
    model = RecordingModel(release)
    batcher = make_batcher(model, max_delay_s=0.02)
    batcher.start()
    try:
        quitter = asyncio.create_task(batcher.predict(images(0.1)))
        stayer = asyncio.create_task(batcher.predict(images(0.2)))
        await asyncio.sleep(0.005)
        quitter.cancel()
        release.set()
        np.testing.assert_allclose(await stayer, np.full((1, 10), 0.2), rtol=1e-6)
        assert quitter.cancelled()
    finally:
        release.set()
        await batcher.stop()


async def test_a_model_failure_reaches_every_request_of_the_batch() -> None:
    class BrokenModel:
        def predict(self, images: np.ndarray) -> np.ndarray:
            raise RuntimeError("kernel exploded")

    batcher = Batcher(BrokenModel(), Metrics().of_version(1), 8, 0.01, 100)
    batcher.start()
    try:
        outcomes = await asyncio.gather(
            batcher.predict(images(0.1)), batcher.predict(images(0.2)), return_exceptions=True
        )
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        assert batcher.running, "one failed batch must not stop the batcher"
    finally:
        await batcher.stop()
