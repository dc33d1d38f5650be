"""Image bombs: bursts of big, well-compressed images against the real server, and what they
do to its resident memory: before, at the peak of each burst, and once it is idle again.

A benchmark, not a test: it measures and reports, and passes or fails nothing. It builds its
images itself and needs only `bench.server`, so the same file can measure an older checkout.

    python bench/image_bombs.py --model models/mnist.onnx --image bomb
    python bench/image_bombs.py --model models/mnist.onnx --image largest --malloc-arena-max 2
"""

import argparse
import json
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if not __package__:  # run as `python bench/image_bombs.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.server import RunningServer, ServerConfig

# 6324x6324 RGBA, just under the 40,000,000 pixels the service allowed before; 16 MB of
# RGBA pixels, the most the new default decoded-bytes limit allows.
IMAGES = {"bomb": (6_324, 6_324), "largest": (2_000, 2_000)}
SAMPLE_S = 0.01
SETTLE_S = 3.0
MIB = 1024 * 1024


def blank_rgba_png(width: int, height: int) -> bytes:
    """A PNG of transparent zeros, compressed a row at a time: 40 Mpx in about 150 KB."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + 4 * width)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def resident_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants (the uvicorn supervisor and its workers)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        pending.extend(int(child) for child in children)
    return total


def burst(url: str, body: bytes, size: int, pid: int) -> tuple[int, Counter[int]]:
    """``size`` requests at once; the highest resident set seen meanwhile and the statuses."""
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes(pid))
            time.sleep(SAMPLE_S)

    def post(_: int) -> int:
        response = httpx.post(
            f"{url}/predict", content=body, headers={"content-type": "image/png"}, timeout=300
        )
        return response.status_code

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(size) as pool:
        statuses = Counter(pool.map(post, range(size)))
    done.set()
    sampler.join()
    return peak, statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/image_bombs.py")
    parser.add_argument("--model", type=Path, required=True, help="the ONNX file to serve")
    parser.add_argument("--image", choices=sorted(IMAGES), default="bomb")
    parser.add_argument("--concurrent", type=int, default=8, help="requests in one burst")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--malloc-arena-max", type=int, default=0, help="glibc MALLOC_ARENA_MAX; 0: unset"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args(argv)

    env = dict(item.split("=", 1) for item in args.env)
    env["MNIST_WORKERS"] = str(args.workers)
    if args.malloc_arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    body = blank_rgba_png(*IMAGES[args.image])
    config = ServerConfig(f"{args.image}-arena{args.malloc_arena_max or 'default'}", env)
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        with RunningServer(args.model, "cpu", config, log, ready_timeout_s=60) as server:
            time.sleep(SETTLE_S)
            baseline = resident_bytes(server.pid)
            rows = []
            for index in range(args.bursts):
                peak, statuses = burst(server.url, body, args.concurrent, server.pid)
                time.sleep(SETTLE_S)
                after = resident_bytes(server.pid)
                rows.append(
                    {
                        "burst": index + 1,
                        "peak_mib": round(peak / MIB, 1),
                        "after_mib": round(after / MIB, 1),
                        "statuses": dict(statuses),
                    }
                )
    width, height = IMAGES[args.image]
    print(
        f"{config.name}: {args.concurrent} x {width}x{height} RGBA PNG ({len(body):,} bytes), "
        f"{args.workers} worker(s); baseline {baseline / MIB:.1f} MiB"
    )
    for row in rows:
        print(
            f"  burst {row['burst']}: peak {row['peak_mib']} MiB, after {row['after_mib']} MiB, "
            f"statuses {row['statuses']}"
        )
    print(
        json.dumps(
            {"config": config.name, "baseline_mib": round(baseline / MIB, 1), "bursts": rows}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
