"""Overload, measured: `python -m bench.overload --help`. Not a test: figures to compare.

(a) thousands of single-image connections at once: the latency every client sees, and the
share refused (503) rather than left waiting; (b) a flood of bulk batches with single-image
clients alongside: what the interactive clients see. wrk drives both (bench/loadgen.py),
the real server serves (bench/server.py). Compare runs made on one machine, one after the
other, only.
"""

import argparse
import json
import resource
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from bench.loadgen import LoadFigures, find_wrk, run_wrk, wrk_command
from bench.payloads import (
    Payload,
    binary_payload,
    json_payload,
    load_test_digits,
    offline_data_dir,
)
from bench.server import REPO_ROOT, RunningServer, ServerConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "mnist.onnx")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=4000, help="scenario (a)")
    parser.add_argument("--interactive", type=int, default=64, help="(b): single-image clients")
    parser.add_argument("--bulk", type=int, default=64, help="(b): bulk clients")
    parser.add_argument("--bulk-size", type=int, default=256, help="(b): images per bulk request")
    parser.add_argument("--wrk", default=None)
    parser.add_argument("--output", type=Path, default=None, help="JSON of the figures")
    args = parser.parse_args(argv)
    wrk = find_wrk(args.wrk)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # wrk needs one descriptor a connection, and the server one more on its side.
    connections = min(args.connections, max(1, soft // 2 - 100))
    if connections < args.connections:
        print(f"fd limit {soft}: scenario (a) with {connections} connections", file=sys.stderr)

    digits = load_test_digits(offline_data_dir())
    single = json_payload(digits.images[0], int(digits.labels[0]))
    bulk = binary_payload(digits.images[: args.bulk_size], digits.labels[: args.bulk_size])
    env = {"MNIST_WORKERS": str(args.workers), "MNIST_ACCESS_LOG": "false"}
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="overload-") as scratch:
        work = Path(scratch)
        config = ServerConfig("overload", env)
        with RunningServer(args.model, "cpu", config, work / "server.log", 120.0) as server:
            a = _load(wrk, server.url, single, work, connections, args.duration)
            results[f"a: {connections} single-image connections"] = _summary(a)
            with ThreadPoolExecutor(2) as pool:
                flood = pool.submit(_load, wrk, server.url, bulk, work, args.bulk, args.duration)
                alone = pool.submit(
                    _load, wrk, server.url, single, work, args.interactive, args.duration
                )
                b_bulk, b_interactive = flood.result(), alone.result()
            results[f"b: interactive ({args.interactive} conns)"] = _summary(b_interactive)
            results[f"b: bulk of {args.bulk_size} ({args.bulk} conns)"] = _summary(b_bulk)
    for name, figures in results.items():
        print(f"{name}: {json.dumps(figures)}")
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _load(
    wrk: str, url: str, payload: Payload, work: Path, connections: int, duration_s: float
) -> LoadFigures:
    body = work / f"{payload.name}.body"
    body.write_bytes(payload.body)
    # Long enough that wrk counts a slow answer as late, not as a socket timeout.
    command = wrk_command(
        wrk,
        url + payload.path,
        body,
        payload.content_type,
        connections,
        threads=2,
        duration_s=duration_s,
        timeout_s=30,
    )
    return run_wrk(command, duration_s)


def _summary(figures: LoadFigures) -> dict[str, object]:
    answered = max(1, figures.requests)
    keep = ("requests", "requests_per_s", "p50_ms", "p99_ms", "max_ms", "statuses")
    summary: dict[str, object] = {k: v for k, v in asdict(figures).items() if k in keep}
    summary["share_503"] = round(figures.statuses.get("503", 0) / answered, 4)
    summary["share_504"] = round(figures.statuses.get("504", 0) / answered, 4)
    summary["socket_errors"] = figures.socket_errors
    return summary


if __name__ == "__main__":
    sys.exit(main())
