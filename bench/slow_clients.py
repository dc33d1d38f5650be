"""Slow and silent clients against a running server: how long it holds their connections,
and how it answers everyone else meanwhile. A measurement, not a test.

    .venv/bin/python -m bench.slow_clients --url http://127.0.0.1:8000 --connections 2000

Modes: ``idle`` (connect, send nothing), ``slow-header`` (a byte of headers a second),
``slow-body`` (complete headers, then a byte of body a second). Every connection is watched
until the server closes it or ``--observe-s`` passes; a normal request on a new connection
is timed every 100 ms throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

HEADER = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
BODY_HEADERS = HEADER + b"Content-Length: 100000\r\n\r\n"


@dataclass
class Outcome:
    held_s: list[float] = field(default_factory=list)  # until the server closed it
    still_open: int = 0
    refused: int = 0  # connect failed or reset at once
    answers: list[tuple[int, float]] = field(default_factory=list)  # status, seconds


async def slow_connection(host: str, port: int, mode: str, until: float, outcome: Outcome) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        outcome.refused += 1
        return
    started = time.monotonic()
    if mode == "slow-body":
        writer.write(BODY_HEADERS)
    payload = iter(HEADER if mode == "slow-header" else b" " * 100_000)
    try:
        while time.monotonic() < until:
            try:
                # Whatever the server answers (408, 503) counts as holding until it closes.
                if not await asyncio.wait_for(reader.read(65536), 1.0):
                    outcome.held_s.append(time.monotonic() - started)
                    return
            except TimeoutError:
                pass
            if mode != "idle":
                writer.write(bytes([next(payload, 32)]))
                await writer.drain()
        outcome.still_open += 1
    except ConnectionError:
        outcome.held_s.append(time.monotonic() - started)
    finally:
        writer.close()


async def keep_asking(url: str, until: float, outcome: Outcome) -> None:
    # A new connection each time: the server must go on accepting, not only answering.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=10, limits=fresh) as client:
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                status = (await client.get(f"{url}/health/live")).status_code
            except httpx.TransportError:
                status = 0
            outcome.answers.append((status, time.monotonic() - started))
            await asyncio.sleep(0.1)


async def run(url: str, connections: int, mode: str, observe_s: float) -> Outcome:
    address = urlsplit(url)
    if address.hostname is None or address.port is None:
        raise SystemExit(f"--url {url}: give host and port, e.g. http://127.0.0.1:8000")
    outcome = Outcome()
    until = time.monotonic() + observe_s
    slow = [
        slow_connection(address.hostname, address.port, mode, until, outcome)
        for _ in range(connections)
    ]
    await asyncio.gather(keep_asking(url, until, outcome), *slow)
    return outcome


def report(outcome: Outcome, connections: int, mode: str, observe_s: float) -> None:
    held = sorted(outcome.held_s)
    print(f"{connections} {mode} connections, watched {observe_s:.0f} s:")
    if held:
        print(
            f"  closed by the server: {len(held)}; held median {statistics.median(held):.1f} s, "
            f"max {held[-1]:.1f} s; within 2 s (over a worker's connection cap): "
            f"{sum(seconds <= 2 for seconds in held)}"
        )
    print(f"  still open at the end: {outcome.still_open}; refused or reset: {outcome.refused}")
    statuses: dict[int, int] = {}
    for status, _ in outcome.answers:
        statuses[status] = statuses.get(status, 0) + 1
    latencies = sorted(seconds for _, seconds in outcome.answers)
    if latencies:
        print(
            f"  meanwhile {len(latencies)} normal requests: statuses {statuses}, median "
            f"{statistics.median(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--mode", choices=("idle", "slow-header", "slow-body"), default="idle")
    parser.add_argument("--observe-s", type=float, default=40.0)
    args = parser.parse_args()
    outcome = asyncio.run(run(args.url, args.connections, args.mode, args.observe_s))
    report(outcome, args.connections, args.mode, args.observe_s)


if __name__ == "__main__":
    main()
