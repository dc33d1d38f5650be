"""Microseconds of Python per request, in process: the app called as ASGI, no sockets.

A benchmark, not a test. Builds the real app (its lifespan loads the model), then sends
the same request ``--calls`` times in a row straight to its ASGI callable, and as many to
a bare ASGI app that answers a constant, and times raw onnxruntime on the same digit. The
difference between the app and the bare one is what the service's own code costs a
request, middleware to response, inference and the hand-over to the inference thread
included: what a lean hot path must cut. Several rounds, min/median/max. The event loop
thread's CPU per request is printed too: the wall time also holds the wait for the
inference thread's hand-over, which moves with the machine's load far more than the
Python does.

    .venv/bin/python -m bench.hot_path --model models/mnist.onnx
    .venv/bin/python -m bench.hot_path --model models/mnist.onnx --profile   # top functions
"""

import argparse
import asyncio
import cProfile
import json
import pstats
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.baselines.bare_asgi import app as bare_app
from bench.payloads import load_test_digits, offline_data_dir
from bench.report import spread
from service.app import create_app
from service.settings import Settings

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/mnist.onnx"))
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--path", default="/predict", help="or /v2/models/mnist/infer")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime", help="pstats order: tottime, cumulative...")
    parser.add_argument("--top", type=int, default=25)
    return parser.parse_args(argv)


def request_for(path: str, image: np.ndarray) -> tuple[dict[str, Any], bytes]:
    if path == "/predict":
        body = json.dumps({"image": image.tolist()}).encode()
    else:
        tensor = {"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8"}
        body = json.dumps({"inputs": [{**tensor, "data": image.ravel().tolist()}]}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    return scope, body


async def per_call_us(
    app: ASGIApp, scope: dict[str, Any], body: bytes, calls: int, loop_cpu_us: list[float]
) -> float:
    """Wall us per call; appends the event loop thread's CPU us per call to ``loop_cpu_us``."""
    message = {"type": "http.request", "body": body, "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return message

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            statuses.append(event["status"])

    started, loop_cpu = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        await app(dict(scope), receive, send)
    elapsed = time.perf_counter() - started
    loop_cpu_us.append((time.thread_time() - loop_cpu) / calls * 1e6)
    if set(statuses) != {200}:
        raise SystemExit(f"not every answer was 200: {sorted(set(statuses))}")
    return elapsed / calls * 1e6


def raw_onnxruntime_us(model: Path, image: np.ndarray, calls: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    batch = (image / 255).astype(np.float32)[np.newaxis, ..., np.newaxis]
    name = session.get_inputs()[0].name
    started = time.perf_counter()
    for _ in range(calls):
        session.run(None, {name: batch})
    return (time.perf_counter() - started) / calls * 1e6


async def measure(args: argparse.Namespace) -> None:
    image = load_test_digits(offline_data_dir()).images[0]
    scope, body = request_for(args.path, image)
    settings = Settings(
        model_path=args.model, device="cpu", workers=1, access_log=False, log_level="warning"
    )
    app = create_app(settings)
    figures: dict[str, list[float]] = {"service": [], "bare ASGI": [], "raw onnxruntime": []}
    # The event loop's own CPU, the inference thread's left out: what the service's Python
    # costs, without the wall clock's wait for the hand-over, which moves with the machine.
    loop_cpu: list[float] = []
    async with app.router.lifespan_context(app):
        await per_call_us(app, scope, body, 200, [])  # warm-up
        for round_ in range(1, args.rounds + 1):
            figures["service"].append(await per_call_us(app, scope, body, args.calls, loop_cpu))
            figures["bare ASGI"].append(await per_call_us(bare_app, scope, body, args.calls, []))
            figures["raw onnxruntime"].append(raw_onnxruntime_us(args.model, image, args.calls))
            print(
                f"round {round_}: "
                + ", ".join(f"{name} {values[-1]:.1f} us" for name, values in figures.items())
                + f", service's event loop CPU {loop_cpu[-1]:.1f} us",
                flush=True,
            )
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await per_call_us(app, scope, body, args.calls, [])
            profiler.disable()
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
    print(f"\n{args.path}, one digit, {args.calls:,} calls a round: min / median / max us")
    for name, values in figures.items():
        print(f"{name:16} {spread(values, '7.1f')}")
    own = [s - b - r for s, b, r in zip(*figures.values(), strict=True)]
    print(
        f"{'service own code':16} {spread(own, '7.1f')}   (service - bare ASGI - raw onnxruntime)"
    )
    print(f"{'event loop CPU':16} {spread(loop_cpu, '7.1f')}   (the service's, on its loop thread)")


def main(argv: list[str] | None = None) -> int:
    asyncio.run(measure(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
