"""Slow clients (slowloris): hundreds of connections that send their request headers a byte
at a time must not keep the real server from answering everyone else."""

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.server import running_server
from training.data import RawSplit

pytestmark = pytest.mark.e2e

SLOW_CLIENTS = 300
ATTACK_S = 20.0
BYTE_EVERY_S = 0.5
# Never ends: the blank line that would close the headers is never sent, and at one byte
# every half second these ~60 bytes outlast the attack anyway.
SLOW_REQUEST = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
# A normal request's bound: far above its few milliseconds, far below a stall.
MAX_LATENCY_S = 2.0
DIGITS = 20


@dataclass
class Answers:
    latencies_s: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def server_url(trained_model_path: Path) -> Iterator[str]:
    with running_server(trained_model_path, MNIST_WORKERS="1") as url:
        yield url


def predict(url: str, image: np.ndarray) -> tuple[int, int, float]:
    """One request on a connection of its own: the server must go on accepting, not only
    keep answering connections it already has. Status, digit and latency."""
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        response = client.post(f"{url}/predict", json={"image": image.tolist()})
    elapsed = time.monotonic() - started
    digit = response.json()["predictions"][0]["digit"] if response.status_code == 200 else -1
    return response.status_code, digit, elapsed


def keep_asking(
    url: str, images: np.ndarray, expected: list[int], stop: threading.Event, answers: Answers
) -> None:
    index = 0
    while not stop.is_set():
        status, digit, elapsed = predict(url, images[index % len(images)])
        answers.latencies_s.append(elapsed)
        if status != 200 or digit != expected[index % len(images)]:
            answers.wrong.append(f"request {index}: status {status}, digit {digit}")
        index += 1
        stop.wait(0.1)


async def slow_client(host: str, port: int, until: float, connected: list[int]) -> bool:
    """Sends the headers a byte at a time until ``until``; True if the server never
    closed the connection meanwhile (closing it would be a fine defence too)."""
    reader, writer = await asyncio.open_connection(host, port)
    connected.append(1)
    try:
        for byte in SLOW_REQUEST:
            if time.monotonic() >= until or reader.at_eof():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(BYTE_EVERY_S)
        return not reader.at_eof()
    except ConnectionError:
        return False
    finally:
        writer.close()


async def test_slow_clients_do_not_keep_the_server_from_answering_others(
    server_url: str, mnist_test_digits: RawSplit
) -> None:
    images = mnist_test_digits.images[:DIGITS]
    # What the model answers when no one is in the way: the answers under attack must match.
    calm = [predict(server_url, image) for image in images]
    assert all(status == 200 for status, _, _ in calm)
    expected = [digit for _, digit, _ in calm]

    address = urlsplit(server_url)
    assert address.hostname == "127.0.0.1"
    assert address.port is not None
    until, connected = time.monotonic() + ATTACK_S, list[int]()
    slow = [
        asyncio.create_task(slow_client(address.hostname, address.port, until, connected))
        for _ in range(SLOW_CLIENTS)
    ]
    # Until every slow client is connected and has sent something: the attack is real.
    await asyncio.sleep(2 * BYTE_EVERY_S)
    assert len(connected) >= SLOW_CLIENTS * 0.9, "the slow clients never got to the server"

    answers, stop = Answers(), threading.Event()
    asker = threading.Thread(
        target=keep_asking, args=(server_url, images, expected, stop, answers), daemon=True
    )
    asker.start()
    held_open = await asyncio.wait_for(asyncio.gather(*slow), timeout=ATTACK_S + 10)
    stop.set()
    await asyncio.to_thread(asker.join, 15)

    latencies = sorted(answers.latencies_s)
    print(
        f"{sum(held_open)}/{SLOW_CLIENTS} slow connections held open for {ATTACK_S:.0f} s; "
        f"meanwhile {len(latencies)} requests, median {statistics.median(latencies) * 1000:.0f}"
        f" ms, max {latencies[-1] * 1000:.0f} ms"
    )
    assert not answers.wrong, answers.wrong[:5]
    assert len(latencies) >= ATTACK_S, "too few requests got through during the attack"
    assert latencies[-1] < MAX_LATENCY_S, f"slowest answer took {latencies[-1]:.2f} s"
