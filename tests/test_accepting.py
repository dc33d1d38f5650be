"""The worker's accepting: every connection waiting when its socket becomes readable is
accepted at that wake-up (uvloop's own server takes one per loop iteration), and a closed
listener refuses new connections."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn

from service.accepting import AcceptingServer, Listener
from service.supervisor import listening_sockets

WAITING = 100
REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"


@contextmanager
def serving(wakeups: list[int]) -> Iterator[tuple[AcceptingServer, int]]:
    """tests.supervised_app under AcceptingServer on uvloop, in a thread; ``wakeups`` gets
    the number of connections each wake-up of the listener accepted."""
    sock = listening_sockets("127.0.0.1", 0, 1)[0]
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        "tests.supervised_app:app", loop="uvloop", lifespan="on", log_level="warning"
    )
    server = AcceptingServer(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    original = Listener._accept_waiting

    def counted(self: Listener) -> None:
        before = self.accepted
        original(self)
        if self.accepted > before:
            wakeups.append(self.accepted - before)

    Listener._accept_waiting = counted  # type: ignore[method-assign]
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "server did not start"
            assert time.monotonic() < deadline, "server did not start in time"
            time.sleep(0.01)
        yield server, port
    finally:
        server.should_exit = True
        thread.join(30)
        Listener._accept_waiting = original  # type: ignore[method-assign]


def test_connections_waiting_while_the_loop_is_busy_are_all_accepted_at_its_next_wakeup() -> None:
    wakeups: list[int] = []
    with serving(wakeups) as (server, port):
        listener = listener_of(server)
        busy, release = threading.Event(), threading.Event()

        def block() -> None:
            busy.set()
            release.wait(30)

        listener._loop.call_soon_threadsafe(block)
        assert busy.wait(10)
        clients = []
        try:
            for _ in range(WAITING):
                client = socket.create_connection(("127.0.0.1", port), timeout=30)
                client.sendall(REQUEST)
                clients.append(client)
            release.set()
            answers = [_read_all(client) for client in clients]
        finally:
            release.set()
            for client in clients:
                client.close()
    assert wakeups[0] == WAITING
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)


def test_a_closed_listener_refuses_new_connections() -> None:
    with serving([]) as (server, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(REQUEST)
            assert _read_all(client).startswith(b"HTTP/1.1 200 ")
        listener = listener_of(server)
        closed = threading.Event()

        def close() -> None:
            listener.close()
            closed.set()

        listener._loop.call_soon_threadsafe(close)
        assert closed.wait(10)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)


def listener_of(server: AcceptingServer) -> Listener:
    listener = server.servers[0]
    assert isinstance(listener, Listener)
    return listener


def _read_all(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
