"""Early shedding: an overloaded worker refuses inference requests before reading them.

Counting queued images alone sheds too late: thousands of single-image requests each
have their body read and parsed, and wait in the event loop, before any reaches the
queue. Counting the requests in progress refuses the excess at once, for the cost of
one comparison, and leaves the worker the time to answer those it took on.
"""

import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deadlines import REQUEST_DEADLINE
from service.metrics import Metrics

RETRY_AFTER_S = 1


def is_inference(scope: Scope) -> bool:
    """POST /predict, or the Open Inference Protocol's infer, with or without a version."""
    if scope["method"] != "POST":
        return False
    path: str = scope["path"]
    return path == "/predict" or (path.startswith("/v2/models/") and path.endswith("/infer"))


class AdmissionMiddleware:
    """Refuses inference requests over ``max_inflight`` in progress with 503 and Retry-After,
    before their body is read; gives each one taken its deadline (``timeout_s``, 0: none)."""

    def __init__(self, app: ASGIApp, max_inflight: int, timeout_s: float, metrics: Metrics):
        self.app = app
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.inflight = 0
        self._refused = metrics.rejected.labels("inflight_limit")
        self._too_large = metrics.rejected.labels("too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_inference(scope):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            self._refused.inc()
            await self._refuse(scope, send)
            return

        async def counting_send(message: Message) -> None:
            # 413s come from several places (body limit, image count): counted once, here.
            if message["type"] == "http.response.start" and message["status"] == 413:
                self._too_large.inc()
            await send(message)

        self.inflight += 1
        token = REQUEST_DEADLINE.set(
            time.perf_counter() + self.timeout_s if self.timeout_s > 0 else None
        )
        try:
            await self.app(scope, receive, counting_send)
        finally:
            REQUEST_DEADLINE.reset(token)
            self.inflight -= 1

    async def _refuse(self, scope: Scope, send: Send) -> None:
        # Open Inference Protocol clients read "error"; ours read "detail".
        key = "error" if scope["path"].startswith("/v2/") else "detail"
        message = (
            f"server busy: {self.inflight} requests in progress on this worker (limit "
            f"{self.max_inflight}, MNIST_MAX_INFLIGHT_REQUESTS); retry after {RETRY_AFTER_S} s"
        )
        body = orjson.dumps({key: message, "request_id": scope.get("state", {}).get("request_id")})
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(RETRY_AFTER_S).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
