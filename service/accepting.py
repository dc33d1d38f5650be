"""A uvicorn server that accepts every waiting connection each time its socket is readable.

uvloop's libuv accepts one connection per event-loop iteration (libuv PR #3696), and under
load an iteration takes from a few to hundreds of milliseconds: at thousands of connections
at once, most of them wait in the kernel's accept queue for the whole run, where no deadline
or limit of the service sees them. asyncio's own loop accepts up to ``backlog`` connections
at each wake-up, but is several times slower at everything else. So the loop stays uvloop,
and the accepting is done here, as asyncio does it: the listening socket is watched with
``add_reader``, and each time it is readable ``accept()`` runs until the queue is empty (at
most ``backlog`` times; if more are left the socket is still readable, and the next
iteration goes on). Each connection is then handed to uvloop with
``connect_accepted_socket``, which builds the same transport a uvloop server would (no
Nagle, non-blocking) for the same protocol, so uvicorn's limits (``limit_concurrency``: 503
over the cap), timeouts and connection count see it as before.

uvicorn closes ``self.servers`` at shutdown and awaits their ``wait_closed()``, and the
drain (service/drain.py) closes them first: the listeners here have both, and closing one
stops the reading and closes the socket, so that new connections are refused.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

logger = logging.getLogger("uvicorn.error")

# Out of descriptors or memory: what asyncio does, stop accepting a moment and try again,
# rather than spin on a socket that stays readable.
_RETRY_AFTER_S = 1.0
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Listener:
    """One listening socket the loop accepts from: a stand-in for an asyncio ``Server``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        create_protocol: Callable[[], asyncio.Protocol],
        batch: int,
        ssl: Any = None,
    ):
        self._loop = loop
        self._sock = sock
        self._create_protocol = create_protocol
        self._batch = max(1, batch)
        self._ssl = ssl
        self._connecting: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.accepted = 0  # connections handed to the loop, for tests
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept_waiting)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed else (self._sock,)

    def _accept_waiting(self) -> None:
        for _ in range(self._batch):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left
            except ConnectionAbortedError:
                continue  # gone before it was accepted
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                logger.error(
                    "cannot accept connections (%s): trying again in %.0f s", exc, _RETRY_AFTER_S
                )
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(_RETRY_AFTER_S, self._resume)
                return
            self.accepted += 1
            # uvloop's connect_accepted_socket is a coroutine, but it builds the transport
            # and schedules connection_made before its first await: the task only waits.
            task = self._loop.create_task(
                self._loop.connect_accepted_socket(self._create_protocol, conn, ssl=self._ssl)
            )
            self._connecting.add(task)
            task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._connecting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("connection dropped as it was accepted: %r", task.exception())

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept_waiting)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    async def wait_closed(self) -> None:
        # uvicorn waits for the connections itself.
        return None


class AcceptingServer(uvicorn.Server):
    """uvicorn's Server, listening with ``Listener`` on the sockets it is given.

    Only the ``sockets`` start-up is replaced (the service always passes its sockets);
    ``announce`` logs uvicorn's "running on" line, which uvicorn leaves out with sockets.
    """

    def __init__(self, config: uvicorn.Config, announce: bool = False):
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            await super().startup(sockets)
            return
        # From here on, what uvicorn's startup does with sockets, but for create_server.
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        # uvicorn types them as asyncio Servers; it only closes and awaits them.
        listeners: list[Any] = [
            Listener(loop, sock, create_protocol, config.backlog, config.ssl) for sock in sockets
        ]
        self.servers = listeners
        if self._announce:
            self._log_started_message(sockets)
        self.started = True
