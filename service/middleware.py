"""ASGI middleware: the request body limit and the per-request metrics."""

import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import InputError
from service.metrics import Metrics


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                # Open Inference Protocol clients read "error"; ours read "detail".
                key = "error" if scope["path"].startswith("/v2/") else "detail"
                await _send_error(send, self._too_big(), key)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_big()
            return message

        await self.app(scope, limited_receive, send)

    def _too_big(self) -> InputError:
        return InputError(
            f"request body over the {self.max_bytes:,}-byte limit (MNIST_MAX_BODY_BYTES): "
            "send fewer or smaller images per request",
            status=413,
        )


async def _send_error(send: Send, error: InputError, key: str) -> None:
    body = orjson.dumps({key: error.message})
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Counts requests by route template and status, and times them."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            # Templates, not raw paths, so that label cardinality stays bounded.
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
