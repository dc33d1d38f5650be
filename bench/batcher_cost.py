"""Microseconds the batcher itself costs a single-image job, in process, no HTTP.

A benchmark, not a test. The rest of the hot path (FastAPI, JSON) is hundreds of
microseconds and noisy on a shared machine, so the batcher's few would drown in it:
here jobs go straight to ``Batcher.infer``, each under a request deadline as the service
sets one, one at a time (c=1) and from ``--concurrency`` tasks at once. With ``--model``
the batches run on onnxruntime and raw onnxruntime is timed beside them; without, on a
model that answers a constant, so that only the batcher's own code is left.

    .venv/bin/python -m bench.batcher_cost
    .venv/bin/python -m bench.batcher_cost --model models/mnist.onnx
    cd /tmp/old-checkout && /path/to/.venv/bin/python -m bench.batcher_cost   # before
"""

import argparse
import asyncio
import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import spread
from service.batcher import Batcher, Predictor
from service.deadlines import REQUEST_DEADLINE
from service.metrics import Metrics

IMAGE = np.zeros((1, 28, 28, 1), np.float32)
DEADLINE_S = 10.0  # the service's default request timeout


class ConstantModel:
    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.zeros((len(images), 10), np.float32)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="default: a constant model")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    return parser.parse_args(argv)


def load_model(path: Path | None) -> Predictor:
    if path is None:
        return ConstantModel()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    class OnnxModel:
        def predict(self, images: np.ndarray) -> np.ndarray:
            return np.asarray(session.run(None, {name: images})[0])

    return OnnxModel()


def make_batcher(model: Predictor) -> Batcher:
    # Whatever settings this checkout's batcher has beyond the original ones keep their
    # defaults, so that one script times a checkout before and after a change alike.
    options: dict[str, Any] = {"interactive_max_images": 8, "max_queued_bulk_images": 8192}
    known = inspect.signature(Batcher).parameters
    return Batcher(
        model,
        Metrics().of_version(1),
        256,
        0.0,
        8192,
        **{k: v for k, v in options.items() if k in known},
    )


async def client(batcher: Batcher, calls: int) -> None:
    for _ in range(calls):
        REQUEST_DEADLINE.set(time.perf_counter() + DEADLINE_S)
        await batcher.infer(IMAGE)


async def per_job_us(batcher: Batcher, calls: int, concurrency: int) -> tuple[float, float]:
    """Wall-clock and CPU (this process, every thread) microseconds per job."""
    each = calls // concurrency
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(batcher, each) for _ in range(concurrency)))
    jobs = each * concurrency
    return (time.perf_counter() - started) / jobs * 1e6, (time.process_time() - cpu) / jobs * 1e6


def raw_us(model: Predictor, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        model.predict(IMAGE)
    return (time.perf_counter() - started) / calls * 1e6


async def measure(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    batcher = make_batcher(model)
    batcher.start()
    figures: dict[str, list[float]] = {}
    try:
        await per_job_us(batcher, 500, 1)  # warm-up
        for round_ in range(1, args.rounds + 1):
            for concurrency in (1, args.concurrency):
                wall, cpu = await per_job_us(batcher, args.calls, concurrency)
                figures.setdefault(f"c={concurrency} wall", []).append(wall)
                figures.setdefault(f"c={concurrency} cpu", []).append(cpu)
            figures.setdefault("raw model", []).append(raw_us(model, args.calls))
            print(
                f"round {round_}: "
                + ", ".join(f"{name} {values[-1]:.2f} us" for name, values in figures.items()),
                flush=True,
            )
    finally:
        await batcher.stop()
    print(f"\nus per single-image job, {args.calls:,} jobs a round: min / median / max")
    for name, values in figures.items():
        print(f"{name:11} {spread(values, '7.2f')}")


def main(argv: list[str] | None = None) -> int:
    asyncio.run(measure(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
