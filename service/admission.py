"""Early shedding: an overloaded worker refuses inference requests before reading them.

Counting queued images alone sheds too late: thousands of single-image requests each
have their body read and parsed, and wait in the event loop, before any reaches the
queue. Counting the requests in progress refuses the excess at once, for the cost of
one comparison, and leaves the worker the time to answer those it took on.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deadlines import REQUEST_DEADLINE
from service.errors import RETRY_AFTER_S, send_refusal
from service.metrics import Metrics


def is_inference(scope: Scope) -> bool:
    """POST /predict, or the Open Inference Protocol's infer, with or without a version."""
    if scope["method"] != "POST":
        return False
    path: str = scope["path"]
    return path == "/predict" or (path.startswith("/v2/models/") and path.endswith("/infer"))


class InflightLimit:
    """Inference requests in progress on one worker, REST and gRPC together: one budget
    (MNIST_MAX_INFLIGHT_REQUESTS), whichever protocol a flood comes by."""

    def __init__(self, limit: int, metrics: Metrics):
        self.limit = limit
        self.inflight = 0
        self._refused = metrics.rejected.labels("inflight_limit")

    def refusal(self) -> str | None:
        """Why a new request is refused now (and counted so), or None when it may start."""
        if self.inflight < self.limit:
            return None
        self._refused.inc()
        return (
            f"server busy: {self.inflight} requests in progress on this worker (limit "
            f"{self.limit}, MNIST_MAX_INFLIGHT_REQUESTS); retry after {RETRY_AFTER_S} s"
        )

    @contextmanager
    def held(self) -> Iterator[None]:
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1


class AdmissionMiddleware:
    """Refuses inference requests over the in-flight limit with 503 and Retry-After, before
    their body is read; gives each one taken its deadline (``timeout_s``, 0: none)."""

    def __init__(self, app: ASGIApp, limit: InflightLimit, timeout_s: float, metrics: Metrics):
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s
        self._too_large = metrics.rejected.labels("too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_inference(scope):
            await self.app(scope, receive, send)
            return
        refusal = self.limit.refusal()
        if refusal is not None:
            await self._refuse(scope, send, refusal)
            return

        async def counting_send(message: Message) -> None:
            # 413s come from several places (body limit, image count): counted once, here.
            if message["type"] == "http.response.start" and message["status"] == 413:
                self._too_large.inc()
            await send(message)

        token = REQUEST_DEADLINE.set(
            time.perf_counter() + self.timeout_s if self.timeout_s > 0 else None
        )
        try:
            with self.limit.held():
                await self.app(scope, receive, counting_send)
        finally:
            REQUEST_DEADLINE.reset(token)

    async def _refuse(self, scope: Scope, send: Send, message: str) -> None:
        await send_refusal(scope, send, 503, message, {"Retry-After": str(RETRY_AFTER_S)})
