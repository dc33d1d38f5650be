"""A client that leaves mid-body is counted as 499, not as the service's own failure."""

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.server import server_process


def test_a_client_that_disconnects_mid_body_counts_as_499_without_a_traceback(
    trained_model_path: Path,
) -> None:
    with server_process(trained_model_path, MNIST_WORKERS="1") as server:
        address = urlsplit(server.url)
        with socket.create_connection((address.hostname, address.port)) as client:
            client.sendall(
                b"POST /predict HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                b'{"images": [[0, 0'
            )
            time.sleep(0.3)
        # The server learns of the close on its next read; give it a moment.
        deadline = time.monotonic() + 10
        metrics = ""
        while time.monotonic() < deadline:
            metrics = httpx.get(f"{server.url}/metrics").text
            if 'status="499"' in metrics:
                break
            time.sleep(0.2)
        requests = [line for line in metrics.splitlines() if "mnist_http_requests_total{" in line]
        assert any('status="499"' in line for line in requests), requests
        assert not any('status="500"' in line for line in requests), requests
        log = "".join(server.output)
        assert "Traceback" not in log, log
