"""The real service, `python -m service` on 127.0.0.1, started and stopped for one configuration."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerError(Exception):
    """The server did not start, or not in time; the message carries the end of its log."""


@dataclass(frozen=True)
class ServerConfig:
    name: str
    env: dict[str, str] = field(default_factory=dict)  # MNIST_* settings of this configuration


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, up to 20 s to finish, then SIGKILL: a server under test never outlives it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def server_env(model: Path, device: str, port: int, config: ServerConfig) -> dict[str, str]:
    """Ours, then the benchmark's fixed settings, then the configuration's: last wins."""
    return {
        **os.environ,
        "MNIST_MODEL_PATH": str(model.resolve()),
        "MNIST_HOST": "127.0.0.1",
        "MNIST_PORT": str(port),
        "MNIST_DEVICE": device,
        "MNIST_LOG_LEVEL": "warning",
        **config.env,
    }


class RunningServer:
    """Context manager: starts the server, waits for /health/ready (bounded), stops it."""

    def __init__(
        self,
        model: Path,
        device: str,
        config: ServerConfig,
        log_path: Path,
        ready_timeout_s: float,
        repo: Path = REPO_ROOT,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = server_env(model, device, self.port, config)
        self._log_path = log_path
        self._ready_timeout_s = ready_timeout_s
        self._repo = repo
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServerError("the server is not running")
        return self._process.pid

    def __enter__(self) -> "RunningServer":
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "service"],
                env=self._env,
                cwd=self._repo,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._ready_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerError(
                    f"the server exited with {self._process.returncode}:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise ServerError(
            f"the server was not ready within {self._ready_timeout_s:.0f} s:\n{self._log_tail()}"
        )

    def _stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
