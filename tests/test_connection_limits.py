"""Time and connections are bounded on the real server: header and body deadlines, the
header size cap, the connection cap, keep-alive, and the shutdown deadline.

Every limit is set short through MNIST_* variables so that each test takes seconds.
"""

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.server import Server, free_port, server_process, start_server, wait_until_ready

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1
MAX_HEADER_BYTES = 8192
# Time the event loop may take past a deadline on a busy two-core machine.
SLACK_S = 1.5
LIMITS = {
    "MNIST_WORKERS": "1",
    "MNIST_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "MNIST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "MNIST_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
    "MNIST_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
}


@pytest.fixture(scope="module")
def server(trained_model_path: Path) -> Iterator[Server]:
    with server_process(trained_model_path, **LIMITS) as running:
        yield running


def connect(url: str) -> socket.socket:
    address = urlsplit(url)
    assert address.hostname == "127.0.0.1"
    assert address.port is not None
    return socket.create_connection((address.hostname, address.port), timeout=10)


def read_until_closed(conn: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed; fails past ``limit_s``."""
    started, received = time.monotonic(), b""
    conn.settimeout(limit_s)
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open over {limit_s} s; got {received!r}")
    return received, time.monotonic() - started


def trickle_and_read(
    conn: socket.socket, piece: bytes, limit_s: float, until: bytes | None = None
) -> bytes:
    """Send ``piece`` every 0.3 s and keep what comes back, until the server closes or
    breaks the connection, ``until`` arrives, or ``limit_s`` passes."""
    conn.settimeout(0.3)
    received = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            conn.sendall(piece)
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        received += chunk
        if not chunk or (until is not None and until in chunk):
            break
    return received


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    with connect(server.url) as conn:
        received, elapsed = read_until_closed(conn, HEADER_TIMEOUT_S + SLACK_S + 5)
    assert received == b""
    assert HEADER_TIMEOUT_S - 0.2 <= elapsed <= HEADER_TIMEOUT_S + SLACK_S


def test_a_slow_header_client_is_cut_off_while_others_are_served(server: Server) -> None:
    closed_after: list[float] = []

    def trickle() -> None:
        with connect(server.url) as conn:
            started = time.monotonic()
            try:
                for byte in b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: yes\r\n":
                    conn.sendall(bytes([byte]))
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            closed_after.append(time.monotonic() - started)

    slow = [threading.Thread(target=trickle) for _ in range(20)]
    for thread in slow:
        thread.start()
    answered = 0
    with httpx.Client(base_url=server.url, timeout=5) as client:
        while any(thread.is_alive() for thread in slow) and answered < 200:
            assert client.get("/health/live").status_code == 200
            answered += 1
            time.sleep(0.02)
    for thread in slow:
        thread.join(timeout=10)
    assert answered >= 10
    # The request line alone takes 2.7 s at this pace: the deadline cut every one short.
    assert len(closed_after) == 20
    assert max(closed_after) <= HEADER_TIMEOUT_S + SLACK_S, closed_after


# Each API answers in its own error shape: ours "detail", the Open Inference Protocol "error".
@pytest.mark.parametrize(
    ("path", "key"), [(b"/predict", "detail"), (b"/v2/models/mnist/infer", "error")]
)
def test_a_slow_body_gets_408_and_the_connection_closes(
    server: Server, path: bytes, key: str
) -> None:
    with connect(server.url) as conn:
        conn.sendall(
            b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"inputs": ['
        )
        started = time.monotonic()
        received = trickle_and_read(conn, b"0,", BODY_TIMEOUT_S + SLACK_S, until=b"}")
        rest, _ = read_until_closed(conn, SLACK_S + 2)
        elapsed = time.monotonic() - started
    head, _, body = (received + rest).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b"connection: close" in head.lower()
    assert "MNIST_BODY_TIMEOUT_S" in json.loads(body)[key]
    assert BODY_TIMEOUT_S - 0.2 <= elapsed <= BODY_TIMEOUT_S + SLACK_S + 2


def test_oversized_headers_get_431_and_the_server_does_not_grow(server: Server) -> None:
    with connect(server.url) as conn:
        conn.sendall(
            b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
            + b"a" * (MAX_HEADER_BYTES * 2)
            + b"\r\n\r\n"
        )
        received, _ = read_until_closed(conn, 5)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), received[:200]
    assert "MNIST_MAX_HEADER_BYTES" in json.loads(body)["detail"]

    # Headers that never end, 32 MB each: the server drops them, and its memory stays put.
    before = rss_bytes(server.process.pid)
    for _ in range(4):
        with connect(server.url) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ")
            try:
                for _ in range(32):
                    conn.sendall(b"a" * 1_000_000)
            except (BrokenPipeError, ConnectionResetError):
                pass
    grown = rss_bytes(server.process.pid) - before
    assert grown < 16_000_000, f"the server grew by {grown / 1e6:.0f} MB"
    assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200


def test_headers_within_the_cap_are_served(server: Server) -> None:
    headers = {"x-fill": "a" * (MAX_HEADER_BYTES // 2)}
    assert httpx.get(f"{server.url}/health/live", headers=headers, timeout=5).status_code == 200


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with connect(server.url) as conn:
        conn.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received, elapsed = read_until_closed(conn, KEEP_ALIVE_S + SLACK_S + 5)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert elapsed <= KEEP_ALIVE_S + SLACK_S


def test_connections_over_the_cap_get_503_not_a_reset(trained_model_path: Path) -> None:
    cap = 5
    with server_process(
        trained_model_path, MNIST_WORKERS="1", MNIST_MAX_CONNECTIONS=str(cap)
    ) as server:
        held = [connect(server.url) for _ in range(cap)]
        try:
            time.sleep(0.3)  # until the server has accepted them all
            answers = []
            for _ in range(10):
                started = time.monotonic()
                response = httpx.get(f"{server.url}/health/live", timeout=5)
                answers.append((response.status_code, time.monotonic() - started))
            assert {status for status, _ in answers} == {503}, answers
            assert max(elapsed for _, elapsed in answers) < 1.0, answers
        finally:
            for conn in held:
                conn.close()
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_with_a_trickling_upload_exits_within_the_drain_deadline(
    trained_model_path: Path, workers: str
) -> None:
    drain_timeout_s = 2
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(
        trained_model_path,
        port,
        MNIST_WORKERS=workers,
        MNIST_DRAIN_TIMEOUT_S=str(drain_timeout_s),
        # Longer than the test: only the drain deadline may end the upload.
        MNIST_BODY_TIMEOUT_S="120",
    )
    try:
        wait_until_ready(process, url)
        stop = threading.Event()

        def upload() -> None:
            with connect(url) as conn:
                conn.sendall(
                    b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                )
                try:
                    while not stop.wait(1.0):
                        conn.sendall(b" ")
                except OSError:
                    pass

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        time.sleep(1.5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # No drain delay in tests; the half-second read grace, then the deadline.
        process.wait(timeout=drain_timeout_s + 10)
        elapsed = time.monotonic() - started
        stop.set()
        print(f"{workers} worker(s), SIGTERM with a 1-byte/s upload: exited in {elapsed:.1f} s")
        assert process.returncode == 0, process.stdout.read() if process.stdout else ""
        # Two workers add the supervisor's wait for both: 4.6 s measured on two busy cores.
        assert elapsed <= 0.5 + drain_timeout_s + SLACK_S + 2, f"exited after {elapsed:.1f} s"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_a_body_answered_early_does_not_keep_the_connection_open(server: Server) -> None:
    with connect(server.url) as conn:
        # Over MNIST_MAX_BODY_BYTES by its Content-Length: 413 before any body is read.
        conn.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        started = time.monotonic()
        received = trickle_and_read(conn, b" ", 5)
        elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 413 "), received[:200]
    assert elapsed <= 1.0 + SLACK_S, f"held {elapsed:.1f} s after its answer"
