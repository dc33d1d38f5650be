"""Graceful drain: on SIGTERM, stop being ready, keep serving a moment, then finish and exit.

An orchestrator sends SIGTERM and, at the same time, stops routing to the instance - but
that takes a few seconds to reach every load balancer. So the worker first answers
readiness with 503 and tells keep-alive clients to reconnect (``Connection: close``) while
it goes on serving for ``MNIST_DRAIN_DELAY_S``; then it hands the signal to uvicorn, whose
graceful shutdown refuses new connections and lets requests in flight finish, up to
``MNIST_DRAIN_TIMEOUT_S``; then the lifespan stops the batchers, whose queues are empty by
then. SIGINT (Ctrl-C) skips the delay.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)
# Long enough for the loop to read the requests of connections it has just accepted.
_READ_GRACE_S = 0.5


class Drain:
    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.draining = False
        self._restore: dict[int, Any] = {}

    def install(self) -> None:
        """Take SIGTERM and SIGINT over from uvicorn, which keeps its handler to call later.

        Signals reach only the main thread, which serves in a real worker; a test client's
        app runs elsewhere and never drains."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            uvicorn_handler = signal.getsignal(sig)
            if not callable(uvicorn_handler):
                continue
            self._restore[sig] = uvicorn_handler

            def begin(
                number: int, frame: FrameType | None, hand_over: Any = uvicorn_handler
            ) -> None:
                if self.draining or number == signal.SIGINT:
                    hand_over(number, frame)  # a second signal, or Ctrl-C: no waiting
                    self.draining = True
                    return
                self.draining = True
                logger.info(
                    "SIGTERM: not ready; serving %.1f s more, then finishing requests in flight",
                    self.delay_s,
                )
                loop.call_soon_threadsafe(
                    loop.call_later, self.delay_s, self._stop_accepting, hand_over, number
                )

            signal.signal(sig, begin)

    def _stop_accepting(self, hand_over: Any, number: int) -> None:
        """Close the listeners, then give uvicorn the signal a moment later.

        uvicorn's shutdown closes every connection that has no request under way, and a
        connection accepted an instant before, whose request it has not read yet, counts
        as one: its client would see a reset. Refusing new connections first, and waiting
        until those already accepted have been read, leaves uvicorn only requests to finish.
        """
        # The handler uvicorn installed is its Server's bound method: the server it stops.
        for listener in getattr(getattr(hand_over, "__self__", None), "servers", ()):
            listener.close()
        asyncio.get_running_loop().call_later(_READ_GRACE_S, hand_over, number, None)

    def uninstall(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._restore.items():
                signal.signal(sig, handler)
        self._restore.clear()
