"""Two services side by side, both up at once, wrk runs interleaved: two configurations
(``--a``/``--b`` settings), or two checkouts (``--a-repo``, e.g. the commit before a change).

A benchmark, not a test. On a shared machine, whatever else runs moves req/s by 2x from
one minute to the next, so a change is judged by ratios taken round by round between two
servers that were up at the same time and measured a few seconds apart, never between
runs made minutes apart. Single-image JSON or a PNG upload, c=1 and c=32 by default.

    .venv/bin/python -m bench.ab --model models/mnist.onnx \\
        --a MNIST_BATCH_MAX_DELAY_MS=0 --b MNIST_BATCH_MAX_DELAY_MS=1
    git worktree add /tmp/before 73accd5
    .venv/bin/python -m bench.ab --model models/mnist.onnx --a-repo /tmp/before \\
        --payload png --concurrency 32
"""

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.loadgen import LoadFigures, find_wrk, run_wrk, wrk_command
from bench.payloads import json_payload, load_test_digits, offline_data_dir, png_payload
from bench.report import spread
from bench.server import REPO_ROOT, RunningServer, ServerConfig

PAYLOADS = {"json": json_payload, "png": png_payload}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/mnist.onnx"))
    parser.add_argument("--a", action="append", default=[], metavar="MNIST_KEY=VALUE")
    parser.add_argument("--b", action="append", default=[], metavar="MNIST_KEY=VALUE")
    parser.add_argument("--a-repo", type=Path, default=REPO_ROOT, help="checkout a serves from")
    parser.add_argument("--b-repo", type=Path, default=REPO_ROOT, help="checkout b serves from")
    parser.add_argument("--payload", choices=sorted(PAYLOADS), default="json")
    parser.add_argument("--concurrency", type=int, action="append", help="default: 1 and 32")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--wrk", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_wrk(args.wrk)
    digits = load_test_digits(offline_data_dir())
    body = PAYLOADS[args.payload](digits.images[0], int(digits.labels[0]))
    concurrencies = args.concurrency or [1, 32]
    out = Path(tempfile.mkdtemp(prefix="ab-"))
    body_file = out / "body"
    body_file.write_bytes(body.body)
    configs = {"a": args.a, "b": args.b}
    repos = {"a": args.a_repo.resolve(), "b": args.b_repo.resolve()}
    runs: dict[tuple[str, int], list[LoadFigures]] = {}
    with ExitStack() as stack:
        urls = {}
        for name, pairs in configs.items():
            env = dict(pair.split("=", 1) for pair in pairs)
            env["MNIST_WORKERS"] = str(args.workers)
            server = RunningServer(
                args.model, "cpu", ServerConfig(name, env), out / f"{name}.log", 120, repos[name]
            )
            urls[name] = stack.enter_context(server).url
        for round_ in range(1, args.rounds + 1):
            for concurrency in concurrencies:
                # Which goes first alternates, so that neither always follows the other.
                order = list(configs) if round_ % 2 else list(reversed(configs))
                for name in order:
                    command = wrk_command(
                        wrk, urls[name] + body.path, body_file, body.content_type,
                        concurrency, 1, args.duration, 10,
                    )  # fmt: skip
                    figures = run_wrk(command, args.duration)
                    runs.setdefault((name, concurrency), []).append(figures)
                    print(
                        f"round {round_} c={concurrency:<3} {name} "
                        f"{figures.requests_per_s:9,.0f} req/s  p50 {figures.p50_ms:6.3f} ms  "
                        f"p99 {figures.p99_ms:7.2f} ms  errors {figures.errors}",
                        flush=True,
                    )
    for name in configs:
        print(f"{name}: {repos[name]}, {' '.join(configs[name]) or 'default settings'}")
    print("b / a, round by round: min / median / max")
    for concurrency in concurrencies:
        pairs = list(zip(runs[("a", concurrency)], runs[("b", concurrency)], strict=True))
        rates = [b.requests_per_s / a.requests_per_s for a, b in pairs]
        p50s = [b.p50_ms / a.p50_ms for a, b in pairs]
        p99s = [b.p99_ms / a.p99_ms for a, b in pairs]
        print(
            f"c={concurrency:<3} req/s {spread(rates, '.2f')}   p50 {spread(p50s, '.2f')}   "
            f"p99 {spread(p99s, '.2f')}"
        )
    errors = sum(run.errors for series in runs.values() for run in series)
    print(f"errors (non-200 or socket) over every run: {errors}; logs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
