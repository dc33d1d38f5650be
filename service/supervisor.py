"""Several uvicorn workers, each on its own SO_REUSEPORT listening socket, and their keeper.

uvicorn's own supervisor hands one listening socket to every worker, and whichever worker
wakes first accepts: under keep-alive, that often puts every connection of a client pool on
one worker while the other idles (4 wrk runs out of 6 in the benchmark). Here each worker
gets a socket of its own, all bound to the same address with SO_REUSEPORT, and the kernel
hashes new connections across them. The sockets are opened here and stay open for the
life of the server, so connections that reach a worker being restarted wait in its socket's
backlog instead of being refused.

It also exits non-zero when a worker cannot start, where uvicorn's exits 0: at start-up,
and when a worker that died is replaced by one that fails. A worker that dies after it
served, or is killed, is restarted.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from types import FrameType

import uvicorn

from service.accepting import AcceptingServer
from service.logs import skip_unused_record_fields

logger = logging.getLogger("uvicorn.error")

multiprocessing.allow_connection_pickling()
_spawn = multiprocessing.get_context("spawn")

# How long a worker may take from spawn to serving: imports, model load and warm-up take a
# few seconds on a CPU, a first CUDA context or TensorRT engine build far longer.
START_TIMEOUT_S = 300.0
# After the workers' own drain deadline, how long before the stragglers are killed.
_KILL_AFTER_S = 5.0
_POLL_S = 0.2


class WorkerStartError(RuntimeError):
    pass


def listening_sockets(host: str, port: int, count: int, backlog: int = 2048) -> list[socket.socket]:
    """``count`` sockets listening on one address, which the kernel balances connections over.

    Port 0 picks a free port for the first, and the others join it. Each listens from here
    on, with ``backlog`` (the kernel caps it at net.core.somaxconn): a connection that comes
    before its worker is up waits for it rather than being refused. uvicorn listens again
    with its own ``backlog``, which must be the same.

    A port another server already listens on is refused (EADDRINUSE), even one that uses
    SO_REUSEPORT too: joining it, a stale instance would silently take half its
    connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port != 0:
        _refuse_if_in_use(family, host, port)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _refuse_if_in_use(family: socket.AddressFamily, host: str, port: int) -> None:
    # Binding without SO_REUSEPORT fails while anyone listens on the port, with or without
    # it; SO_REUSEADDR keeps connections in TIME_WAIT from a previous run out of the way.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _serve(config: uvicorn.Config, sock: socket.socket, started: Event) -> None:
    """A worker: uvicorn on the socket it was given; ``started`` once the app is ready."""
    config.configure_logging()
    skip_unused_record_fields()
    server = AcceptingServer(config)

    def report_start() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            started.set()

    threading.Thread(target=report_start, daemon=True).start()
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(uvicorn.config.STARTUP_FAILURE)


@dataclass
class _Worker:
    sock: socket.socket
    process: SpawnProcess
    started: Event
    ever_started: bool = False
    spawned_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts ``len(sockets)`` workers, restarts those that die, and forwards SIGTERM."""

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        stop_timeout_s: float,
        on_worker_exit: Callable[[int], None] = lambda pid: None,
    ):
        self._config = config
        self._sockets = sockets
        self._stop_timeout_s = stop_timeout_s
        self._on_worker_exit = on_worker_exit
        self._workers: list[_Worker] = []
        self._stopping: int | None = None

    def run(self) -> int:
        """Serve until a signal or a worker that cannot start; the exit status to use."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._workers = [self._spawn(sock) for sock in self._sockets]
            logger.info(
                "Started %d workers [%s], each on its own socket (SO_REUSEPORT)",
                len(self._workers),
                ", ".join(str(worker.process.pid) for worker in self._workers),
            )
            status = self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sock in self._sockets:
                sock.close()
        return status

    def _spawn(self, sock: socket.socket) -> _Worker:
        started = _spawn.Event()
        process = _spawn.Process(
            target=_serve, args=(self._config, sock, started), name="mnist-worker"
        )
        process.start()
        return _Worker(sock, process, started)

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        # Only note it here: the watch loop passes it on, outside the signal handler.
        self._stopping = number

    def _watch(self) -> int:
        forwarded: set[int] = set()
        while True:
            if self._stopping is not None:
                if self._stopping not in forwarded:
                    forwarded.add(self._stopping)
                    self._signal_all(self._stopping)
                    # Ours are only kept for restarts: with them closed, each socket closes
                    # when its worker's drain closes it, and new connections are refused
                    # rather than left waiting in a backlog nobody accepts from any more.
                    for sock in self._sockets:
                        sock.close()
                if not any(worker.process.is_alive() for worker in self._workers):
                    return 0
                time.sleep(_POLL_S)
                continue
            for index, worker in enumerate(self._workers):
                if worker.started.is_set():
                    worker.ever_started = True
                if worker.process.is_alive():
                    if not worker.ever_started and (
                        time.monotonic() - worker.spawned_at > START_TIMEOUT_S
                    ):
                        logger.error(
                            "Worker [%d] did not start within %.0f s: stopping the server",
                            worker.process.pid,
                            START_TIMEOUT_S,
                        )
                        return 1
                    continue
                pid, code = worker.process.pid or 0, worker.process.exitcode
                self._on_worker_exit(pid)
                # A worker that ends by itself before it served (an import error, a failed
                # lifespan) would fail the same way again; one killed by a signal meanwhile
                # (the OOM killer, an operator) is replaced like any other.
                if not worker.ever_started and code is not None and code >= 0:
                    logger.error(
                        "Worker [%d] failed to start (exit code %s): stopping the server",
                        pid,
                        code,
                    )
                    return 1
                logger.warning("Worker [%d] died (exit code %s): starting another", pid, code)
                self._workers[index] = self._spawn(worker.sock)
            time.sleep(_POLL_S)

    def _signal_all(self, number: int) -> None:
        for worker in self._workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, number)

    def _stop_all(self) -> None:
        """Workers still running get SIGTERM (and their drain), then SIGKILL past its deadline."""
        alive = [worker.process for worker in self._workers if worker.process.is_alive()]
        if self._stopping is None:
            for process in alive:
                process.terminate()
        deadline = time.monotonic() + self._stop_timeout_s + _KILL_AFTER_S
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("Worker [%d] did not stop in time: killing it", process.pid)
                process.kill()
                process.join()
