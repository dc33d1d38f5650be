"""What API keys cost per request: the same server with and without keys, in one run.

    python -m bench.auth_overhead --model models/mnist.onnx [--duration 8] [--rounds 2]

First times the key check alone in this process: the middleware around an app that does
nothing, against that app bare. Then starts the real server twice per round, open and
with MNIST_API_KEYS, alternating so that
a machine that slows down mid-run weighs on both alike; drives single-image JSON /predict
with wrk at concurrency 1 and 32, the keyed one with `Authorization: Bearer KEY`; prints
each run, then the medians and their ratio. Writes auth_overhead.json beside the other
results.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

if not __package__:  # run as `python bench/auth_overhead.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen
from bench.payloads import json_payload, load_test_digits, offline_data_dir
from bench.server import RunningServer, ServerConfig
from service.auth import AuthMiddleware, KeyRing
from service.metrics import Metrics
from service.settings import Settings

KEY = "bench-key-0123456789abcdef"
CONCURRENCY = (1, 32)
CALLS = 200_000


def time_the_key_check() -> dict[str, float]:
    """Microseconds per call: a no-op ASGI app, bare and behind the key check."""

    async def nothing(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    keys = KeyRing([KEY, "another-inference-key"], ["an-admin-key"])
    checked = AuthMiddleware(nothing, keys, Settings(), Metrics())
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode())]
    scope: Scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}

    async def per_call(app: ASGIApp) -> float:
        started = time.perf_counter()
        for _ in range(CALLS):
            await app(dict(scope), _never, _never)
        return (time.perf_counter() - started) / CALLS * 1e6

    async def both() -> dict[str, float]:
        return {"bare_us": await per_call(nothing), "with_key_check_us": await per_call(checked)}

    return asyncio.run(both())


async def _never(*_: object) -> Any:
    raise AssertionError("the app under test neither receives nor sends")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.auth_overhead")
    parser.add_argument("--model", type=Path, default=Path("models/mnist.onnx"))
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="0: the service's default")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    in_process = time_the_key_check()
    print(
        f"in process: the key check adds "
        f"{in_process['with_key_check_us'] - in_process['bare_us']:.1f} us a request "
        f"({in_process['bare_us']:.2f} us bare, {CALLS:,} calls)",
        flush=True,
    )
    digits = load_test_digits(offline_data_dir())
    payload = json_payload(digits.images[0], int(digits.labels[0]))
    wrk = loadgen.find_wrk(None)
    runs: dict[str, dict[int, list[tuple[float, float]]]] = {"open": {}, "keys": {}}
    with tempfile.TemporaryDirectory() as scratch:
        body = Path(scratch, "body.json")
        body.write_bytes(payload.body)
        for round_ in range(1, args.rounds + 1):
            for mode in ("open", "keys"):
                env = {"MNIST_ACCESS_LOG": "true"}
                if args.workers:
                    env["MNIST_WORKERS"] = str(args.workers)
                headers: tuple[str, ...] = ()
                if mode == "keys":
                    env["MNIST_API_KEYS"] = KEY
                    headers = (f"Authorization: Bearer {KEY}",)
                config = ServerConfig(mode, env)
                log = Path(scratch, f"{mode}-{round_}.log")
                with RunningServer(args.model, "cpu", config, log, 120.0) as server:
                    for concurrency in CONCURRENCY:
                        command = loadgen.wrk_command(
                            wrk,
                            f"{server.url}{payload.path}",
                            body,
                            payload.content_type,
                            concurrency,
                            1,
                            args.duration,
                            10.0,
                            headers,
                        )
                        figures = loadgen.run_wrk(command, args.duration)
                        if figures.non_200 or any(figures.socket_errors.values()):
                            print(f"{mode}: errors {figures.statuses} {figures.socket_errors}")
                            return 1
                        runs[mode].setdefault(concurrency, []).append(
                            (figures.requests_per_s, figures.p50_ms)
                        )
                        print(
                            f"round {round_} {mode:>4} c={concurrency:<2} "
                            f"{figures.requests_per_s:8.0f} req/s  p50 {figures.p50_ms:.3f} ms",
                            flush=True,
                        )
    summary: dict[str, dict[str, float]] = {"in_process": in_process}
    for concurrency in CONCURRENCY:
        row: dict[str, float] = {}
        for mode in ("open", "keys"):
            row[f"{mode}_requests_per_s"] = statistics.median(r for r, _ in runs[mode][concurrency])
            row[f"{mode}_p50_ms"] = statistics.median(p for _, p in runs[mode][concurrency])
        row["keys_over_open_throughput"] = row["keys_requests_per_s"] / row["open_requests_per_s"]
        row["p50_added_us"] = (row["keys_p50_ms"] - row["open_p50_ms"]) * 1000
        summary[f"c={concurrency}"] = {key: round(value, 3) for key, value in row.items()}
        print(
            f"c={concurrency}: open {row['open_requests_per_s']:.0f} req/s, with keys "
            f"{row['keys_requests_per_s']:.0f} req/s (x{row['keys_over_open_throughput']:.3f}); "
            f"p50 {row['p50_added_us']:+.1f} us",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "auth_overhead.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
