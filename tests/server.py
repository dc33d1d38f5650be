"""The real service for end-to-end tests: `python -m service` under uvicorn on 127.0.0.1."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    server: subprocess.Popen[str], url: str, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Polls /health/ready; fails the test if the server exits or is not ready in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = server.stdout.read() if server.stdout else ""
            pytest.fail(f"server exited with {server.returncode}: {output}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready within {timeout_s:.0f} s")


@contextmanager
def running_server(model_path: Path, **env: str) -> Iterator[str]:
    """A ready server for ``model_path``; yields its base URL and stops it afterwards."""
    port = free_port()
    server = start_server(model_path, port, **env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, url)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
