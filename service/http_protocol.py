"""uvicorn's httptools protocol with the bounds it lacks, and the uvicorn settings for the rest.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``), connections and
tasks (``limit_concurrency``: 503) and shutdown (``timeout_graceful_shutdown``). It arms no
timer before a connection's first response, though, so a client that sends nothing, or its
headers a byte at a time, holds a file descriptor forever; and with httptools nothing caps
the size of the headers. This subclass adds both: a deadline for each request's headers,
and a byte count that answers 431. It also closes a connection whose response went out
before its body came in, which would otherwise trickle on forever, and shows uvicorn's
set of request tasks to the app's ``RequestsInProgress``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from service.requests_in_progress import STATE_KEY
from service.settings import Settings

logger = logging.getLogger(__name__)
# Over the connection cap, a client gets this long to send a request and be answered 503:
# long enough for any client that is really asking, short enough that a flood of silent
# connections cannot run the worker out of file descriptors.
OVER_CAP_HEADER_TIMEOUT_S = 1.0
# After an early answer (431, 413) the client may still be sending; closing with its bytes
# unread would reset the connection and lose the answer, so they are read and dropped this long.
LINGER_S = 1.0


@dataclass(frozen=True)
class HeaderLimits:
    timeout_s: float
    max_bytes: int
    max_connections: int


@functools.cache
def header_limits() -> HeaderLimits:
    # uvicorn builds protocols from its Config alone; each worker reads the same MNIST_*
    # settings its app does, once.
    settings = Settings()
    return HeaderLimits(
        settings.header_timeout_s, settings.max_header_bytes, settings.max_connections
    )


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.run`` arguments that bound connections, time and header size."""
    return {
        "http": BoundedHttpToolsProtocol,
        # uvicorn counts the asking connection itself: N + 1 serves N and answers 503 beyond.
        "limit_concurrency": settings.max_connections + 1,
        # The listen(2) backlog of each worker's socket: time spent there is before any
        # deadline of ours starts.
        "backlog": settings.listen_backlog,
        "timeout_keep_alive": settings.keep_alive_s,
        "timeout_graceful_shutdown": max(1, math.ceil(settings.drain_timeout_s)),
        # Only h11 reads it (it answers 400, not 431): the cap holds whichever parser runs.
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = header_limits()
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True
        self._header_bytes = 0  # of the request whose headers are still coming
        self._body_bytes_fed = 0  # in the chunk being parsed: not header bytes
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        in_progress = self.app_state.get(STATE_KEY)
        if in_progress is not None:
            in_progress.watch(self.tasks)
        over_cap = len(self.connections) > self.limits.max_connections
        self._arm_header_timer(OVER_CAP_HEADER_TIMEOUT_S if over_cap else None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a 431: read and dropped
        self._body_bytes_fed = 0
        super().data_received(data)
        if self._awaiting_headers and not self._refused and not self.transport.is_closing():
            # Headers not complete yet: bound what the parser buffers for them. With a
            # pipelined request after a body in the same chunk this counts a little more
            # than the headers, never less.
            self._header_bytes += len(data) - self._body_bytes_fed
            if self._header_bytes > self.limits.max_bytes:
                self._refuse_headers()

    # Parser callbacks
    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._cancel_header_timer()
        self._awaiting_headers = False
        # Exact, now that they are parsed: a whole header can arrive in one read.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        self._header_bytes = 0
        if size > self.limits.max_bytes:
            self._refuse_headers()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes_fed += len(body)
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._awaiting_headers = True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Answered before the body was in (413, a route that does not read it): the rest of
        # the body would keep the connection open for as long as it trickles. It is read and
        # dropped a moment, so that a client still sending reads its answer, not a reset.
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self.loop.call_later(LINGER_S, self._close_if_body_unfinished, self.cycle)

    def _close_if_body_unfinished(self, cycle: RequestResponseCycle) -> None:
        if self.cycle is cycle and cycle.more_body and not self.transport.is_closing():
            self.transport.close()

    # Limits
    def _arm_header_timer(self, timeout_s: float | None = None) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(
            timeout_s or self.limits.timeout_s, self._header_timeout
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            # Debug only: a slow-client flood would otherwise flood the log too.
            logger.debug(
                "closing %s: no complete request headers within %.1f s (MNIST_HEADER_TIMEOUT_S)",
                self.client,
                self.limits.timeout_s,
            )
            self.transport.close()

    def _refuse_headers(self) -> None:
        self._refused = True
        self._cancel_header_timer()
        logger.warning(
            "refused request headers from %s over %d bytes (MNIST_MAX_HEADER_BYTES): 431",
            self.client,
            self.limits.max_bytes,
        )
        body = orjson.dumps(
            {
                "detail": f"request line and headers over the {self.limits.max_bytes:,}-byte "
                "limit (MNIST_MAX_HEADER_BYTES): send fewer or shorter headers"
            }
        )
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
