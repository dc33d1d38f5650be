"""The supervisor of several workers: each on its own SO_REUSEPORT socket, restarted when it
dies, and a non-zero exit when one cannot start (uvicorn's own exits 0)."""

import asyncio
import collections
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from service.http_protocol import uvicorn_limits
from service.settings import Settings
from service.supervisor import listening_sockets
from tests.server import REPO_ROOT, free_port

START_TIMEOUT_S = 30.0


@contextmanager
def supervised(workers: int, **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.supervised_app", str(port), str(workers)],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def pid_of_a_new_connection(url: str) -> int | None:
    try:
        return int(httpx.get(url, headers={"Connection": "close"}, timeout=5).text)
    except httpx.TransportError:
        return None


def wait_for_pids(
    url: str, count: int, process: subprocess.Popen[str], exclude: int | None = None
) -> set[int]:
    """Until ``count`` distinct workers (other than ``exclude``) answered, or the timeout."""
    seen: set[int] = set()
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(seen) < count and time.monotonic() < deadline and process.poll() is None:
        pid = pid_of_a_new_connection(url)
        if pid is None:
            time.sleep(0.1)
        elif pid != exclude:
            seen.add(pid)
    return seen


def test_sockets_share_one_port_and_port_0_picks_one_free_port_for_all() -> None:
    sockets = listening_sockets("127.0.0.1", 0, 3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        assert ports != {0}
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "so_reuseport"])
def test_a_port_another_server_listens_on_is_refused(reuse_port: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        # A stale mnist-serve listens with SO_REUSEPORT; joining it would take half its
        # connections, so both kinds of listener must make the port unusable.
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(OSError, match="in use") as refused:
            listening_sockets("127.0.0.1", other.getsockname()[1], 2)
        assert refused.value.errno == errno.EADDRINUSE


def test_a_port_left_in_time_wait_by_a_previous_run_can_be_listened_on_again() -> None:
    first = listening_sockets("127.0.0.1", 0, 1)
    port = first[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = first[0].accept()
    accepted.close()  # the server closes first: its side of the connection is in TIME_WAIT
    client.close()
    first[0].close()
    again = listening_sockets("127.0.0.1", port, 2)
    for sock in again:
        sock.close()


def listen_backlog(sock: socket.socket) -> int:
    """The backlog the kernel gives a listening socket: Linux reports it in TCP_INFO's
    ``tcpi_sacked`` for a socket in LISTEN (after 8 one-byte fields and 5 ``u32``s)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 28)[0])


def test_each_socket_listens_with_the_backlog_asked_for() -> None:
    # 37: below any net.core.somaxconn, which caps it, and unlike any default.
    sockets = listening_sockets("127.0.0.1", 0, 2, backlog=37)
    try:
        assert [listen_backlog(sock) for sock in sockets] == [37, 37]
    finally:
        for sock in sockets:
            sock.close()


def test_uvicorn_listens_again_with_the_same_backlog_setting() -> None:
    limits = uvicorn_limits(Settings(listen_backlog=37))
    assert limits["backlog"] == 37


async def pids_of_a_burst(url: str, connections: int) -> list[bytes]:
    """Open ``connections`` at once, as a client pool does, then ask each who serves it."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    opened = await asyncio.gather(
        *(asyncio.open_connection(host, port) for _ in range(connections))
    )

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        # Chunked: the pid is the chunk after its length line.
        return response.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[1]

    return list(await asyncio.gather(*(ask(*pair) for pair in opened)))


def test_a_burst_of_connections_is_spread_over_the_workers() -> None:
    with supervised(2) as (process, url):
        assert len(wait_for_pids(url, 2, process)) == 2
        served = collections.Counter(asyncio.run(pids_of_a_burst(url, 64)))
    # The kernel hashes each connection's ports over the sockets: 64 fair coin tosses give
    # fewer than 16 on one side about once in 30,000 runs. With one socket shared, as
    # uvicorn does, the worker that wakes first takes most: 25 of 32 in 4 runs out of 6.
    assert len(served) == 2, served
    assert min(served.values()) >= 16, served


def test_a_worker_that_dies_is_replaced_and_the_server_keeps_answering() -> None:
    with supervised(2) as (process, url):
        workers = wait_for_pids(url, 2, process)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for_pids(url, 2, process, exclude=victim)
        answers = [pid_of_a_new_connection(url) for _ in range(40)]
        assert process.poll() is None
    assert len(replaced) == 2, replaced
    assert None not in answers
    assert victim not in answers


def test_a_worker_that_cannot_start_makes_the_server_exit_1() -> None:
    with supervised(2, SUPERVISED_APP_FAILS="1") as (process, _):
        output, _ = process.communicate(timeout=START_TIMEOUT_S)
    assert process.returncode == 1, output
    assert "failed to start" in output


def test_sigterm_stops_every_worker_and_exits_0() -> None:
    with supervised(2) as (process, url):
        assert len(wait_for_pids(url, 2, process)) == 2
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert pid_of_a_new_connection(url) is None
