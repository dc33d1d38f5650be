"""ASGI middleware: the request body limit, and what every request gets (id, metrics, log)."""

import itertools
import logging
import os
import re
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.access_log import AccessLog
from service.drain import Drain
from service.errors import InputError, send_refusal
from service.logs import ACCESS_LOGGER
from service.metrics import Metrics

access_logger = logging.getLogger(ACCESS_LOGGER)


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
                too_big = self._too_big()
                await send_refusal(scope, send, too_big.status, too_big.message)
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


class AccessMiddleware:
    """What every request gets, whatever answers it: an id, counting and timing, one access
    log line, the headers every response carries, and ``Connection: close`` while draining.

    The id is the client's ``X-Request-ID`` when it is sane, else a new one; routes and error
    handlers find it, and report the images and model version back, in ``scope["state"]``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, drain: Drain, access_log: AccessLog | None):
        self.app = app
        self.metrics = metrics
        self.drain = drain
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        request_id = state["request_id"] = _request_id(scope["headers"])
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers += [(b"x-request-id", request_id.encode()), *_ALWAYS]
                if self.drain.draining:
                    # Keep-alive clients reconnect, and land on an instance that stays.
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            # The client left mid-body: nobody to answer, and no fault of ours, so 499 (as
            # nginx counts it) rather than a 500 and a traceback for every impatient client.
            status = 499
            access_logger.info("client disconnected before sending its whole body")
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            # Templates, not raw paths, so that label cardinality stays bounded.
            path = getattr(route, "path", "unmatched")
            self.metrics.request_done(path, scope["method"], str(status), elapsed)
            if self.access_log is not None:
                client = scope.get("client")
                self.access_log.request(
                    {
                        "request_id": request_id,
                        "method": scope["method"],
                        "route": path,
                        "status": status,
                        "latency_ms": round(elapsed * 1000, 3),
                        "images": state.get("images"),
                        "model_version": state.get("model_version"),
                        "client": f"{client[0]}:{client[1]}" if client else None,
                        "key_id": state.get("key_id"),
                    }
                )


# Every response: no content sniffing, no referrer leaking to other sites.
_ALWAYS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            return request_id_from(value.decode("latin-1"))
    return request_id_from(None)


def request_id_from(presented: str | None) -> str:
    """The client's request id when it is sane (REST's header, gRPC's metadata), else a new one."""
    if presented is not None and _SANE_ID.fullmatch(presented):
        return presented
    return f"{_new_ids.prefix}{next(_new_ids.count):016x}"


class _NewIds:
    """New request ids: a random prefix per process, then a count, 32 hex digits like a
    uuid4's and as unique across workers and restarts. uuid4 asks the kernel for random
    bytes each request, and that call gives up the GIL on the event loop: with decode and
    inference threads busy, the loop then waits for it (PNG uploads, c=32: 1.07x req/s)."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.count = itertools.count()


_new_ids = _NewIds()
# A forked child would repeat its parent's ids (workers are spawned, but a test or a tool
# may fork).
os.register_at_fork(after_in_child=_new_ids.renew)
