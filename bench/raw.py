"""Raw onnxruntime in this process, no server: the physical limit for the service."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from model_contract import INPUT_NAME, OUTPUT_NAME
from service.models.session import CPU, CUDA

Device = Literal["cpu", "cuda"]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class LatencyFigures:
    intra_op_threads: int
    runs: int
    calls_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float


@dataclass(frozen=True)
class ThroughputFigures:
    intra_op_threads: int
    batch: int
    runs: int
    seconds: float
    images_per_s: float


@dataclass(frozen=True)
class RawFigures:
    """Every measurement, for each thread count tried; the limit is the best of them."""

    provider: str
    batch1_by_threads: tuple[LatencyFigures, ...]
    batches_by_threads: tuple[ThroughputFigures, ...]

    @property
    def batch1(self) -> LatencyFigures:
        return min(self.batch1_by_threads, key=lambda f: f.p50_ms)

    def best_batch(self, batch: int) -> ThroughputFigures:
        return max(
            (f for f in self.batches_by_threads if f.batch == batch),
            key=lambda f: f.images_per_s,
        )

    def images_per_s(self, batch: int) -> float:
        return self.best_batch(batch).images_per_s

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(f.batch for f in self.batches_by_threads))


def open_session(model: Path, device: Device, intra_op_threads: int) -> ort.InferenceSession:
    """The session as the service builds it: same thread options, same provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    providers = [CUDA, CPU] if device == "cuda" else [CPU]
    session = ort.InferenceSession(str(model), options, providers=providers)
    if device == "cuda" and session.get_providers()[0] != CUDA:
        raise RuntimeError(f"--device cuda, but onnxruntime runs on {session.get_providers()}")
    return session


def as_model_input(images: npt.NDArray[np.uint8]) -> F32:
    return (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]


def measure_batch1(
    session: ort.InferenceSession, threads: int, images: F32, runs: int
) -> LatencyFigures:
    """Latency of single-image calls, each on a different real digit."""
    for i in range(min(runs, 50)):  # arenas and kernel choice, before timing
        session.run([OUTPUT_NAME], {INPUT_NAME: images[i % len(images)][np.newaxis]})
    timings = np.empty(runs, np.float64)
    for i in range(runs):
        one = images[i % len(images)][np.newaxis]
        started = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: one})
        timings[i] = time.perf_counter() - started
    p50, p90, p99 = np.percentile(timings, [50, 90, 99]) * 1000
    calls_per_s = runs / float(timings.sum())
    return LatencyFigures(threads, runs, calls_per_s, float(p50), float(p90), float(p99))


def measure_throughput(
    session: ort.InferenceSession, threads: int, images: F32, batch: int, seconds: float
) -> ThroughputFigures:
    """Images per second at ``batch``, calling back to back for about ``seconds`` (>= 3 calls)."""
    inputs = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
    runs = 0
    started = time.perf_counter()
    elapsed = 0.0
    while runs < 3 or elapsed < seconds:
        session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
        runs += 1
        elapsed = time.perf_counter() - started
    return ThroughputFigures(threads, batch, runs, elapsed, batch * runs / elapsed)


def measure_raw(
    model: Path,
    device: Device,
    thread_counts: tuple[int, ...],
    digits: npt.NDArray[np.uint8],
    batch1_runs: int,
    seconds_per_batch: float,
    batches: tuple[int, ...] = (256, 1024),
) -> RawFigures:
    """Each figure for each intra-op thread count: one server worker's, and the whole machine's."""
    images = as_model_input(digits)
    provider = ""
    batch1: list[LatencyFigures] = []
    throughput: list[ThroughputFigures] = []
    for threads in dict.fromkeys(thread_counts):
        session = open_session(model, device, threads)
        provider = session.get_providers()[0]
        batch1.append(measure_batch1(session, threads, images, batch1_runs))
        throughput.extend(
            measure_throughput(session, threads, images, b, seconds_per_batch) for b in batches
        )
    return RawFigures(provider, tuple(batch1), tuple(throughput))
