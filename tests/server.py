"""The real service for end-to-end tests: `python -m service` under uvicorn on 127.0.0.1."""

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(model_path: Path, port: int, **env: str) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        "MNIST_MODEL_PATH": str(model_path),
        "MNIST_HOST": "127.0.0.1",
        "MNIST_PORT": str(port),
        "MNIST_DEVICE": "cpu",
        # Tests stop their servers with SIGTERM: no load balancer needs the drain's delay.
        "MNIST_DRAIN_DELAY_S": "0",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=environment,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_ready(
    server: subprocess.Popen[str],
    url: str,
    timeout_s: float = READY_TIMEOUT_S,
    path: str = "/health/ready",
) -> None:
    """Polls ``path``; fails the test if the server exits or does not answer 200 in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = server.stdout.read() if server.stdout else ""
            pytest.fail(f"server exited with {server.returncode}: {output}")
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready within {timeout_s:.0f} s")


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]  # with one worker, the worker itself
    output: list[str] = field(default_factory=list)  # its log lines so far


@contextmanager
def running_server(model_path: Path, **env: str) -> Iterator[str]:
    """A ready server for ``model_path``; yields its base URL and stops it afterwards."""
    with server_process(model_path, **env) as server:
        yield server.url


@contextmanager
def server_process(
    model_path: Path, ready_path: str = "/health/ready", **env: str
) -> Iterator[Server]:
    """A server that answers ``ready_path``; its log is read as it comes, so that a chatty
    server never blocks on a full pipe."""
    port = free_port()
    server = start_server(model_path, port, **env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, url, path=ready_path)
        running = Server(url, server)
        assert server.stdout is not None
        stdout = server.stdout

        def drain() -> None:
            for line in stdout:
                running.output.append(line)

        threading.Thread(target=drain, daemon=True, name="server-log").start()
        yield running
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
