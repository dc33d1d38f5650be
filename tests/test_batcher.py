"""The dynamic batcher, with a recording fake model instead of onnxruntime."""

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from service import batcher as batcher_module
from service.batcher import Batcher, QueueFullError
from service.deadlines import DeadlineExceededError
from service.metrics import Metrics


class RecordingModel:
    """Answers each image with its own mean in every column; remembers batch sizes, and
    the thread each batch ran on."""

    def __init__(self, release: threading.Event | None = None):
        self.batch_sizes: list[int] = []
        self.threads: list[int] = []
        self.tasks: list[asyncio.Task[object] | None] = []  # None: off the event loop
        self.release = release

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self.release is not None:
            assert self.release.wait(5), "test never released the model"
        self.batch_sizes.append(len(images))
        self.threads.append(threading.get_ident())
        try:
            self.tasks.append(asyncio.current_task())
        except RuntimeError:
            self.tasks.append(None)
        return np.repeat(images.reshape(len(images), -1).mean(axis=1, keepdims=True), 10, axis=1)


def images(*values: float) -> np.ndarray:
    return np.stack([np.full((28, 28, 1), v, np.float32) for v in values])


def make_batcher(
    model: RecordingModel,
    metrics: Metrics | None = None,
    alone: Callable[[], bool] = lambda: False,
    **overrides: float,
) -> Batcher:
    options: dict[str, float] = {
        "max_batch_size": 64,
        "max_delay_s": 0.0,
        "max_queued_images": 100,
        "max_queued_bulk_images": 100,
        "inline_max_images": 0,
    }
    options.update(overrides)
    return Batcher(
        model,
        (metrics or Metrics()).of_version(1),
        max_batch_size=int(options["max_batch_size"]),
        max_delay_s=options["max_delay_s"],
        max_queued_images=int(options["max_queued_images"]),
        interactive_max_images=8,
        max_queued_bulk_images=int(options["max_queued_bulk_images"]),
        inline_max_images=int(options["inline_max_images"]),
        alone=alone,
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


class SlowModel(RecordingModel):
    """Takes ``seconds`` per call, as a loaded model does, and remembers each batch's values."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.batches: list[set[float]] = []

    def predict(self, images: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        self.batches.append({round(float(v), 3) for v in images.reshape(len(images), -1)[:, 0]})
        return super().predict(images)


async def test_a_bulk_flood_does_not_make_interactive_requests_503() -> None:
    model = SlowModel(0.002)
    batcher = make_batcher(model, max_queued_images=20, max_queued_bulk_images=64)
    batcher.start()
    try:
        bulk = [asyncio.create_task(batcher.predict(images(*[0.9] * 32))) for _ in range(2)]
        await asyncio.sleep(0)
        # The bulk queue is full now: more bulk is refused, single images are not.
        with pytest.raises(QueueFullError):
            await batcher.predict(images(*[0.9] * 32))
        singles = await asyncio.gather(*(batcher.predict(images(0.1)) for _ in range(20)))
        assert all(result.shape == (1, 10) for result in singles)
        assert all(r.shape == (32, 10) for r in await asyncio.gather(*bulk))
    finally:
        await batcher.stop()


async def test_bulk_still_progresses_under_interactive_load() -> None:
    model = SlowModel(0.001)
    batcher = make_batcher(model, max_batch_size=16, max_queued_images=1000)
    batcher.start()
    stop = asyncio.Event()

    async def interactive_client() -> None:
        while not stop.is_set():
            await batcher.predict(images(0.1))

    clients = [asyncio.create_task(interactive_client()) for _ in range(64)]
    try:
        await asyncio.sleep(0.05)  # the interactive queue is never empty from here on
        bulk = await asyncio.wait_for(batcher.predict(images(*[0.9] * 16)), 2)
        assert bulk.shape == (16, 10)
        interactive_batches = sum(1 for values in model.batches if values == {0.1})
        assert interactive_batches > 0, "the interactive load never got going"
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await batcher.stop()


async def test_interactive_jobs_run_before_bulk_queued_earlier() -> None:
    release = threading.Event()
    model = RecordingModel(release)
    batcher = make_batcher(model, max_batch_size=16)
    batcher.start()
    try:
        running = asyncio.create_task(batcher.predict(images(0.5)))
        await asyncio.sleep(0.01)  # the model holds this batch until released
        bulk = asyncio.create_task(batcher.predict(images(*[0.9] * 16)))
        await asyncio.sleep(0)
        single = asyncio.create_task(batcher.predict(images(0.1)))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(running, bulk, single)
    finally:
        release.set()
        await batcher.stop()
    assert model.batch_sizes == [1, 1, 16]


async def test_an_expired_job_is_not_run_and_gets_504() -> None:
    release = threading.Event()
    model = RecordingModel(release)
    metrics = Metrics()
    batcher = make_batcher(model, metrics)
    batcher.start()
    try:
        blocker = asyncio.create_task(batcher.predict(images(0.5)))
        await asyncio.sleep(0.01)  # the model holds this batch until released
        started = time.perf_counter()
        with pytest.raises(DeadlineExceededError) as expired:
            await batcher.predict(images(0.2), deadline=started + 0.05)
        # Answered at its deadline, not when the model got round to it.
        assert time.perf_counter() - started < 0.5
        assert expired.value.status == 504
        assert "MNIST_REQUEST_TIMEOUT_MS" in expired.value.message
        release.set()
        await blocker
        assert (await batcher.predict(images(0.3))).shape == (1, 10)
    finally:
        release.set()
        await batcher.stop()
    assert model.batch_sizes == [1, 1], "the expired job must never reach the model"
    assert metrics.rejected.labels("deadline")._value.get() == 1


async def test_a_job_past_its_deadline_on_arrival_is_refused_at_once() -> None:
    batcher = make_batcher(RecordingModel())
    batcher.start()
    try:
        with pytest.raises(DeadlineExceededError):
            await batcher.predict(images(0.2), deadline=time.perf_counter() - 0.001)
    finally:
        await batcher.stop()


async def test_an_expired_job_frees_its_place_in_the_queue() -> None:
    release = threading.Event()
    model = RecordingModel(release)
    batcher = make_batcher(model, max_queued_images=2)
    batcher.start()
    try:
        blocker = asyncio.create_task(batcher.predict(images(0.5)))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExceededError):
            await batcher.predict(images(0.2), deadline=time.perf_counter() + 0.02)
        # The blocker still holds one place; the expired job holds none.
        waiting = asyncio.create_task(batcher.predict(images(0.3)))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(blocker, waiting)
    finally:
        release.set()
        await batcher.stop()


async def test_a_later_job_with_an_earlier_deadline_expires_first() -> None:
    release = threading.Event()
    model = RecordingModel(release)
    batcher = make_batcher(model)
    batcher.start()
    try:
        blocker = asyncio.create_task(batcher.predict(images(0.5)))
        await asyncio.sleep(0.01)  # the model holds this batch until released
        now = time.perf_counter()
        patient = asyncio.create_task(batcher.predict(images(0.1), deadline=now + 5))
        hasty = asyncio.create_task(batcher.predict(images(0.2), deadline=now + 0.03))
        with pytest.raises(DeadlineExceededError):
            await hasty
        assert not patient.done()
        release.set()
        np.testing.assert_allclose(await patient, np.full((1, 10), 0.1), rtol=1e-6)
        await blocker
    finally:
        release.set()
        await batcher.stop()
    assert model.batch_sizes == [1, 1]


async def test_a_job_whose_deadline_passes_while_its_batch_runs_gets_504_not_its_answer() -> None:
    release = threading.Event()
    model = RecordingModel(release)
    metrics = Metrics()
    batcher = make_batcher(model, metrics)
    batcher.start()
    try:
        with pytest.raises(DeadlineExceededError):
            await batcher.predict(images(0.2), deadline=time.perf_counter() + 0.03)
        release.set()
        # The batch still finishes, and the batcher goes on taking jobs.
        assert (await batcher.predict(images(0.3))).shape == (1, 10)
    finally:
        release.set()
        await batcher.stop()
    assert model.batch_sizes == [1, 1]
    assert metrics.rejected.labels("deadline")._value.get() == 1


async def test_answered_jobs_are_not_kept_until_their_deadline() -> None:
    batcher = make_batcher(RecordingModel())
    batcher.start()
    try:
        for _ in range(50):
            await batcher.predict(images(0.1), deadline=time.perf_counter() + 60)
        await asyncio.sleep(0)
        # Their images and answers are freed now, not a timeout later.
        assert len(batcher._deadlines) <= 1
    finally:
        await batcher.stop()


async def test_answered_jobs_behind_a_waiting_earlier_deadline_are_freed_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batcher_module, "_COMPACT_FLOOR", 4)
    release = threading.Event()
    heap_sizes: list[int] = []

    class HeapWatchingModel(RecordingModel):
        def predict(self, images: np.ndarray) -> np.ndarray:
            if len(images) == 9:
                heap_sizes.append(len(batcher._deadlines))
            return super().predict(images)

    batcher = make_batcher(HeapWatchingModel(release), max_batch_size=8)
    batcher.start()
    try:
        blocker = asyncio.create_task(batcher.predict(images(0.5)))
        await asyncio.sleep(0.01)  # the model holds this batch until released
        far = time.perf_counter() + 60
        # Bulk, with the earliest deadline: it waits at the heap's head while interactive
        # jobs run first and are answered behind it.
        bulk = asyncio.create_task(batcher.predict(images(*[0.9] * 9), deadline=far - 1))
        singles = [
            asyncio.create_task(batcher.predict(images(0.1), deadline=far)) for _ in range(40)
        ]
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(blocker, bulk, *singles)
    finally:
        release.set()
        await batcher.stop()
    # 32 singles were answered before bulk ran; only those still waiting were kept.
    assert len(heap_sizes) == 1
    assert heap_sizes[0] <= 9


async def test_the_queued_images_gauge_counts_a_waiting_job_and_drops_once_it_is_answered() -> None:
    release = threading.Event()
    metrics = Metrics()
    batcher = make_batcher(RecordingModel(release), metrics)
    gauge = metrics.queued_images.labels("1")
    batcher.start()
    try:
        blocker = asyncio.create_task(batcher.predict(images(0.5)))
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(batcher.predict(images(0.1, 0.2)))
        await asyncio.sleep(0)
        assert gauge._value.get() == 3
        release.set()
        await asyncio.gather(blocker, waiting)
        assert gauge._value.get() == 0
    finally:
        release.set()
        await batcher.stop()


async def test_stopping_waits_for_the_batch_running_and_ends_the_inference_thread() -> None:
    release = threading.Event()
    model = RecordingModel(release)
    batcher = make_batcher(model)
    batcher.start()
    running = asyncio.create_task(batcher.predict(images(0.5)))
    await asyncio.sleep(0.01)  # the model holds this batch until released
    threading.Timer(0.05, release.set).start()
    await batcher.stop()
    # The model was still in use when stop began: it returns only once that call is over,
    # so an unloaded version's session is never freed under a running batch.
    assert model.batch_sizes == [1]
    assert not [t for t in threading.enumerate() if t.name == "inference" and t.is_alive()]
    running.cancel()  # a version stops once its requests are done: none is left waiting


async def test_small_batches_run_on_the_event_loop_and_larger_ones_on_the_inference_thread() -> (
    None
):
    model = RecordingModel()
    metrics = Metrics()
    batcher = make_batcher(model, metrics, inline_max_images=2)
    batcher.start()
    try:
        small = await batcher.predict(images(0.25, 0.5))
        large = await batcher.predict(images(0.1, 0.2, 0.3))
    finally:
        await batcher.stop()
    assert model.batch_sizes == [2, 3]
    loop_thread = threading.get_ident()
    assert model.threads[0] == loop_thread
    assert model.threads[1] != loop_thread
    np.testing.assert_allclose(small[:, 0], [0.25, 0.5], rtol=1e-6)
    np.testing.assert_allclose(large[:, 0], [0.1, 0.2, 0.3], rtol=1e-6)
    # Run inline or not, a batch is measured the same way.
    assert metrics.registry.get_sample_value("mnist_batch_size_count", {"version": "1"}) == 2


async def test_a_model_failure_on_the_loop_reaches_every_request_of_the_batch() -> None:
    class Failing(RecordingModel):
        def predict(self, images: np.ndarray) -> np.ndarray:
            raise RuntimeError("onnxruntime fell over")

    batcher = make_batcher(Failing(), inline_max_images=8, max_delay_s=0.02)
    batcher.start()
    try:
        results = await asyncio.gather(
            batcher.predict(images(0.1)), batcher.predict(images(0.2)), return_exceptions=True
        )
        assert batcher.running  # the batcher goes on after a failed batch
    finally:
        await batcher.stop()
    assert [str(result) for result in results] == ["onnxruntime fell over"] * 2


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"version": "1"})


async def test_a_lone_small_request_runs_at_once_in_its_own_task_on_an_idle_batcher() -> None:
    model = RecordingModel()
    metrics = Metrics()
    batcher = make_batcher(model, metrics, alone=lambda: True, inline_max_images=8)
    batcher.start()
    await asyncio.sleep(0)  # the batcher is waiting for work
    try:
        answer = await batcher.predict(images(0.25, 0.5))
    finally:
        await batcher.stop()
    assert model.tasks == [asyncio.current_task()]
    np.testing.assert_allclose(answer[:, 0], [0.25, 0.5], rtol=1e-6)
    # Measured as the batch of one job that it is, which waited for nothing.
    assert sample(metrics, "mnist_queue_wait_seconds_count") == 1
    assert sample(metrics, "mnist_queue_wait_seconds_sum") == 0
    assert sample(metrics, "mnist_batch_size_sum") == 2
    assert sample(metrics, "mnist_inference_seconds_count") == 1
    assert sample(metrics, "mnist_images_predicted_total") == 2


@pytest.mark.parametrize(
    ("alone", "count", "delay_s", "runs_on"),
    [
        pytest.param(False, 1, 0.0, "batcher", id="others-in-progress"),
        pytest.param(True, 9, 0.0, "thread", id="more-than-inline"),
        pytest.param(True, 1, 0.001, "batcher", id="a-delay-to-wait-for-company"),
    ],
)
async def test_other_requests_go_through_the_batcher(
    alone: bool, count: int, delay_s: float, runs_on: str
) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, alone=lambda: alone, inline_max_images=8, max_delay_s=delay_s)
    batcher.start()
    await asyncio.sleep(0)
    try:
        await batcher.predict(images(*[0.5] * count))
    finally:
        await batcher.stop()
    [task] = model.tasks
    if runs_on == "thread":
        assert task is None
    else:
        assert task is not None
        assert task is not asyncio.current_task()


async def test_a_lone_request_waits_for_the_batch_running() -> None:
    release = threading.Event()
    model = RecordingModel(release)
    batcher = make_batcher(model, alone=lambda: True, inline_max_images=1)
    batcher.start()
    try:
        running = asyncio.create_task(batcher.predict(images(0.1, 0.2)))  # on the thread
        await asyncio.sleep(0.01)  # taken, and held on the thread until released
        lone = asyncio.create_task(batcher.predict(images(0.3)))
        await asyncio.sleep(0.01)
        assert not lone.done()  # queued behind the running batch, not run past it
        release.set()
        await asyncio.gather(running, lone)
    finally:
        release.set()
        await batcher.stop()
    assert model.batch_sizes == [2, 1]
    assert model.tasks[1] is not None
    assert model.tasks[1] is not lone


async def test_a_lone_request_past_its_deadline_is_refused_and_not_run() -> None:
    model = RecordingModel()
    metrics = Metrics()
    batcher = make_batcher(model, metrics, alone=lambda: True, inline_max_images=8)
    batcher.start()
    await asyncio.sleep(0)
    try:
        with pytest.raises(DeadlineExceededError):
            await batcher.infer(images(0.5), deadline=time.perf_counter() - 1)
        assert batcher.running
    finally:
        await batcher.stop()
    assert model.batch_sizes == []
    assert (
        metrics.registry.get_sample_value("mnist_rejected_requests_total", {"reason": "deadline"})
        == 1
    )


async def test_a_model_failure_reaches_a_lone_request_and_the_batcher_goes_on() -> None:
    class Failing(RecordingModel):
        def predict(self, images: np.ndarray) -> np.ndarray:
            raise RuntimeError("onnxruntime fell over")

    batcher = make_batcher(Failing(), alone=lambda: True, inline_max_images=8)
    batcher.start()
    await asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match="fell over"):
            await batcher.predict(images(0.5))
        assert batcher.running
    finally:
        await batcher.stop()
