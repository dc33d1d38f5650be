"""The service between its floor and its ceiling, on the same cores, in the same run.

A benchmark, not a test. Four servers, each with ``--workers`` uvicorn workers, all on
127.0.0.1 and started together: the bare ASGI ceiling (a constant answer), the inference
floor (a bare ASGI app doing only the work: parse, onnxruntime, encode), plain FastAPI +
onnxruntime, and the real service. Then ``--rounds`` rounds; each round runs wrk against
each server in turn (single-image JSON, c=1 and c=32), so that whatever else the machine
does is spread over them alike. Prints every run, then min/median/max per row and the
ratios the performance issue sets targets for, and where the floor itself stands.

    .venv/bin/python -m bench.ceiling --model models/mnist.onnx
    .venv/bin/python -m bench.ceiling --model models/mnist.onnx --repo /tmp/old-checkout
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import LoadFigures, find_wrk, run_wrk, wrk_command
from bench.payloads import Payload, json_payload, load_test_digits, offline_data_dir
from bench.report import spread
from bench.server import REPO_ROOT, RunningServer, ServerConfig, free_port, stop_process

BARE, FLOOR, PLAIN, SERVICE = "bare ASGI", "inference floor", "plain FastAPI", "service"
CONCURRENCY = (1, 32)
# Each baseline row: its app's module in bench/baselines, and its log file.
BASELINES = {
    BARE: ("bare_asgi", "bare.log"),
    FLOOR: ("inference_floor", "floor.log"),
    PLAIN: ("plain_fastapi", "plain.log"),
}


@dataclass(frozen=True)
class Target:
    url: str
    pid: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/mnist.onnx"))
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="checkout of the service")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--wrk", default=None)
    return parser.parse_args(argv)


@contextmanager
def uvicorn_app(app: str, workers: int, model: Path, log: Path, body: Payload) -> Iterator[Target]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--workers", str(workers)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    command += ["--no-access-log"]
    env = {**os.environ, "MNIST_MODEL_PATH": str(model.resolve())}
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=output)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_answering(url, body, process)
        yield Target(url, process.pid)
    finally:
        stop_process(process)


def _wait_answering(url: str, body: Payload, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        request = urllib.request.Request(
            url + body.path, body.body, {"Content-Type": body.content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within 60 s (exit code {process.poll()})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_wrk(args.wrk)
    digits = load_test_digits(offline_data_dir())
    body = json_payload(digits.images[0], int(digits.labels[0]))
    out = Path(tempfile.mkdtemp(prefix="ceiling-"))
    body_file = out / "body.json"
    body_file.write_bytes(body.body)
    runs: dict[tuple[str, int], list[LoadFigures]] = {}
    with ExitStack() as stack:
        service = stack.enter_context(
            RunningServer(
                args.model,
                "cpu",
                ServerConfig(SERVICE, {"MNIST_WORKERS": str(args.workers)}),
                out / "service.log",
                ready_timeout_s=120,
                repo=args.repo,
            )
        )
        targets = {
            name: stack.enter_context(
                uvicorn_app(
                    f"bench.baselines.{module}:app", args.workers, args.model, out / log, body
                )
            )
            for name, (module, log) in BASELINES.items()
        }
        targets[SERVICE] = Target(service.url, service.pid)
        print(
            f"{args.rounds} rounds x {len(targets)} servers x c={CONCURRENCY}, "
            f"{args.duration:g} s each; service from {args.repo}",
            flush=True,
        )
        for round_ in range(1, args.rounds + 1):
            for concurrency in CONCURRENCY:
                for name, target in targets.items():
                    command = wrk_command(
                        wrk,
                        target.url + body.path,
                        body_file,
                        body.content_type,
                        concurrency,
                        1,
                        args.duration,
                        10,
                    )
                    figures = run_wrk(command, args.duration)
                    runs.setdefault((name, concurrency), []).append(figures)
                    print(
                        f"round {round_} c={concurrency:<3} {name:15} "
                        f"{figures.requests_per_s:9,.0f} req/s  p50 {figures.p50_ms:6.3f} ms  "
                        f"p99 {figures.p99_ms:7.2f} ms  errors {figures.errors}",
                        flush=True,
                    )

    print("\nmin / median / max over the rounds")
    for (name, concurrency), series in runs.items():
        rates = [f.requests_per_s for f in series]
        print(
            f"c={concurrency:<3} {name:15} req/s {spread(rates):>26}   "
            f"p50 ms {spread([f.p50_ms for f in series], '.3f'):>22}   "
            f"p99 ms {spread([f.p99_ms for f in series], '.2f'):>22}"
        )

    def median(name: str, concurrency: int, field: str) -> float:
        return float(statistics.median(float(getattr(f, field)) for f in runs[(name, concurrency)]))

    def ratio_spread(concurrency: int, field: str, over: str, of: str = SERVICE) -> str:
        pairs = zip(runs[(of, concurrency)], runs[(over, concurrency)], strict=True)
        return spread([getattr(a, field) / getattr(b, field) for a, b in pairs], ".2f")

    print("\nratios, round by round (min / median / max), and the issue's targets")
    print(
        f"c=32 service / bare ASGI req/s:     {ratio_spread(32, 'requests_per_s', BARE)}"
        "   target >= 0.30"
    )
    print(
        f"c=32 service / plain FastAPI req/s: {ratio_spread(32, 'requests_per_s', PLAIN)}"
        "   target >= 4"
    )
    print(f"c=1 service / bare ASGI p50:        {ratio_spread(1, 'p50_ms', BARE)}   target <= 2.5")
    print(
        f"c=32 service p99 median:            {median(SERVICE, 32, 'p99_ms'):.2f} ms   target <= 10"
    )
    print("\nthe floor: what the work alone leaves of the ceiling, and the service of the floor")
    print(f"c=32 floor / bare ASGI req/s:       {ratio_spread(32, 'requests_per_s', BARE, FLOOR)}")
    print(f"c=1 floor / bare ASGI p50:          {ratio_spread(1, 'p50_ms', BARE, FLOOR)}")
    print(f"c=32 service / floor req/s:         {ratio_spread(32, 'requests_per_s', FLOOR)}")
    print(f"c=1 service / floor p50:            {ratio_spread(1, 'p50_ms', FLOOR)}")
    errors = sum(run.errors for series in runs.values() for run in series)
    print(f"errors (non-200 or socket) over every run: {errors}; logs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
