"""Image bombs against the real server: a 40-megapixel PNG of ~150 KB and a JPEG whose header
lies about its size are refused from their headers, and a burst of the largest images the
limits allow leaves the worker's resident memory near where it was."""

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.digits import blank_png, drawn_one, lying_jpeg
from tests.server import Server, server_process

pytestmark = pytest.mark.e2e

BURST = 8
# The whole burst decoded at once would take 8 x 16 MB of pixels, and several times that
# in the pipeline's copies; bounded decoding keeps the growth far below.
MAX_GROWTH_BYTES = 150 * 1024 * 1024


@pytest.fixture(scope="module")
def server(trained_model_path: Path) -> Iterator[Server]:
    with server_process(trained_model_path, MNIST_WORKERS="1") as running:
        yield running


def resident_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and of its children (with one worker there are none)."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        total += int(rss.split()[1]) * 1024
        pids.extend(int(child) for child in children)
    return total


def burst(url: str, body: bytes, content_type: str) -> list[httpx.Response]:
    def post(_: int) -> httpx.Response:
        return httpx.post(
            f"{url}/predict", content=body, headers={"content-type": content_type}, timeout=60
        )

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(post, range(BURST)))


def settle(server: Server) -> int:
    """The resident set once the server is idle again: one small request, then a pause."""
    assert httpx.post(
        f"{server.url}/predict", content=drawn_one(), headers={"content-type": "image/png"}
    ).is_success
    time.sleep(1.0)
    return resident_bytes(server.process.pid)


def test_a_burst_of_png_bombs_is_refused_from_the_header_with_413(server: Server) -> None:
    bomb = blank_png(6_324, 6_324, "RGBA")  # 40 million pixels, 160 MB once decoded
    assert len(bomb) < 200_000
    before = settle(server)
    answers = burst(server.url, bomb, "image/png")
    assert [a.status_code for a in answers] == [413] * BURST
    assert "6324x6324" in answers[0].json()["detail"]
    assert "scale it down" in answers[0].json()["detail"]
    assert resident_bytes(server.process.pid) - before < MAX_GROWTH_BYTES


def test_a_jpeg_whose_header_lies_about_its_size_is_400(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/predict", content=lying_jpeg(6_000), headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 400, response.text
    assert "says 6000x6000" in response.json()["detail"]


def test_a_burst_of_the_largest_allowed_images_leaves_memory_bounded(server: Server) -> None:
    largest = blank_png(2_000, 2_000, "RGBA")  # 16,000,000 bytes decoded: the default limit
    before = settle(server)
    answers = burst(server.url, largest, "image/png")
    # Fully transparent: white paper, no digit. What counts is that each was decoded.
    assert {a.status_code for a in answers} == {422}
    assert all("blank" in a.json()["detail"] for a in answers)
    assert settle(server) - before < MAX_GROWTH_BYTES


def test_more_than_the_decode_budget_at_once_gets_503_with_retry_after(
    trained_model_path: Path,
) -> None:
    budget = {"MNIST_DECODE_CONCURRENCY": "1", "MNIST_DECODE_MEMORY_BYTES": "40000000"}
    with server_process(trained_model_path, MNIST_WORKERS="1", **budget) as small:
        answers = burst(small.url, blank_png(2_000, 2_000, "RGBA"), "image/png")
        exported = httpx.get(f"{small.url}/metrics", timeout=10).text
    codes = sorted(a.status_code for a in answers)
    assert 503 in codes, codes
    assert 422 in codes, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert "retry after 1 s" in refused.json()["detail"]
    counted = re.search(
        r'^mnist_rejected_requests_total\{reason="decode_budget"\} (\S+)$', exported, re.M
    )
    assert counted is not None
    assert float(counted.group(1)) == codes.count(503)
