"""How evenly the workers share a keep-alive client pool: connections and requests per worker.

A benchmark, not a test. It starts the real server (two workers by default), then runs wrk
``--runs`` times (single-image JSON, ``--connections`` keep-alive connections, fresh ones
each run) and, per run, counts each worker's connections (``ss``, halfway through) and the
requests it answered (its own counter file in the Prometheus multiprocess directory), and
prints the run's requests/s. Then min/median/max over the runs.

    .venv/bin/python -m bench.balance --model models/mnist.onnx
    .venv/bin/python -m bench.balance --repo /tmp/old-checkout   # the same, older code
"""

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client.multiprocess import MultiProcessCollector

from bench.loadgen import find_wrk, run_wrk, wrk_command
from bench.payloads import Payload, check_answer, json_payload, load_test_digits, offline_data_dir
from bench.server import REPO_ROOT, RunningServer, ServerConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/mnist.onnx"))
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="checkout to serve from")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--wrk", default=None)
    return parser.parse_args(argv)


def connections_by_pid(port: int) -> dict[int, int]:
    """Established connections to ``port``, by the pid of the process that holds them."""
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    counts: dict[int, int] = {}
    for line in listing.splitlines():
        for pid in set(re.findall(r"pid=(\d+)", line)):
            counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


def sample_connections(port: int, after_s: float, into: dict[int, int]) -> None:
    time.sleep(after_s)
    into.update(connections_by_pid(port))


def requests_by_pid(metrics_dir: Path) -> dict[int, float]:
    """Each worker's own count of answered requests, read from its counter file alone."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        with tempfile.TemporaryDirectory() as alone:
            shutil.copy(path, alone)
            for family in MultiProcessCollector(None, alone).collect():  # type: ignore[no-untyped-call]
                if family.name == "mnist_http_requests":
                    counts[pid] = sum(s.value for s in family.samples if s.name.endswith("_total"))
    return counts


def wait_for_every_worker(url: str, body: Payload, metrics_dir: Path, workers: int) -> None:
    """Ready means one worker is; the runs need all of them (bounded by a minute)."""
    deadline = time.monotonic() + 60
    while len(requests_by_pid(metrics_dir)) < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"not every one of {workers} workers answered within 60 s")
        for _ in range(10):  # new connections: each may reach any worker
            check_answer(url, body)
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_wrk(args.wrk)
    digits = load_test_digits(offline_data_dir())
    out = Path(tempfile.mkdtemp(prefix="balance-"))
    body = json_payload(digits.images[0], int(digits.labels[0]))
    body_file = out / "body.json"
    body_file.write_bytes(body.body)
    metrics_dir = out / "metrics"
    metrics_dir.mkdir()
    config = ServerConfig(
        "balance",
        {"MNIST_WORKERS": str(args.workers), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    rates: list[float] = []
    lesser_shares: list[float] = []
    print(f"serving from {args.repo}; {args.runs} runs of wrk c={args.connections}")
    with RunningServer(
        args.model, "cpu", config, out / "server.log", ready_timeout_s=120, repo=args.repo
    ) as server:
        wait_for_every_worker(server.url, body, metrics_dir, args.workers)
        for run in range(1, args.runs + 1):
            before = requests_by_pid(metrics_dir)
            sampled: dict[int, int] = {}

            sampler = threading.Thread(
                target=sample_connections, args=(server.port, args.duration / 2, sampled)
            )
            sampler.start()
            command = wrk_command(
                wrk,
                f"{server.url}{body.path}",
                body_file,
                body.content_type,
                args.connections,
                1,
                args.duration,
                10,
            )
            figures = run_wrk(command, args.duration)
            sampler.join()
            after = requests_by_pid(metrics_dir)
            served = {pid: after[pid] - before.get(pid, 0) for pid in after}
            workers = sorted(set(served) | set(sampled))
            per_worker = ", ".join(
                f"[{pid}] {sampled.get(pid, 0)} conns {served.get(pid, 0):,.0f} req"
                for pid in workers
            )
            total = sum(served.values()) or 1
            share = min(served.get(pid, 0) for pid in workers) / total if workers else 0.0
            if len(workers) < args.workers:
                share = 0.0  # a worker that answered nothing
            rates.append(figures.requests_per_s)
            lesser_shares.append(share)
            print(
                f"run {run}: {figures.requests_per_s:8,.0f} req/s  p99 {figures.p99_ms:6.2f} ms  "
                f"errors {figures.errors}  lesser worker {share:5.1%}  {per_worker}",
                flush=True,
            )

    def spread(values: list[float], unit: str) -> str:
        low, mid, high = min(values), statistics.median(values), max(values)
        return f"min {low:{unit}} / median {mid:{unit}} / max {high:{unit}}"

    print(
        f"req/s:                 {spread(rates, ',.0f')} (max/min {max(rates) / min(rates):.2f}x)"
    )
    print(f"lesser worker's share: {spread(lesser_shares, '.1%')} (even: {1 / args.workers:.0%})")
    print(f"server log: {out / 'server.log'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
