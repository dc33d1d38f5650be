"""What every gRPC call gets, as every REST request does: a server span, counting and timing
in REST's metric families, and one access log line.

One interceptor rather than a decorator on each RPC, so that an RPC added later has all
of it without asking. The RPCs report what only they
know (images, model version, key id) in the call's ``CallRecord``, as REST's routes do in
``scope["state"]``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from service.access_log import AccessLog
from service.metrics import Metrics
from service.middleware import request_id_from
from service.tracing import Tracing

# The method label of gRPC calls in REST's request metrics and access line: every call is
# an HTTP/2 POST, so "POST" would say nothing, and this one marks a status as a gRPC code.
GRPC_METHOD = "GRPC"
# The codes that are the server's fault, not the client's (OpenTelemetry's RPC conventions).
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


@dataclass
class CallRecord:
    images: int | None = None
    model_version: str | None = None
    key_id: str | None = None


_CALL: ContextVar[CallRecord | None] = ContextVar("grpc_call", default=None)


def this_call() -> CallRecord:
    """The running call's record; a throwaway one outside the interceptor (unit tests)."""
    return _CALL.get() or CallRecord()


class ObservingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, metrics: Metrics, tracing: Tracing, access_log: AccessLog | None):
        self._metrics = metrics
        self._tracing = tracing
        self._access_log = access_log
        # gRPC asks on every call; the wrapped handler of a method is the same each time.
        self._handlers: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        method: str = details.method
        observed = self._handlers.get(method)
        if observed is not None:
            return observed
        handler = await continuation(details)
        # None: a method this server lacks, which gRPC answers UNIMPLEMENTED itself; unnamed
        # methods stay out of the labels. Streaming RPCs are all unimplemented here.
        if handler is None or handler.unary_unary is None:
            return handler
        observed = self._handlers[method] = grpc.unary_unary_rpc_method_handler(
            self._observed(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return observed

    def _observed(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            record = CallRecord()
            token = _CALL.set(record)
            metadata = _metadata(context)
            code = grpc.StatusCode.UNKNOWN
            span = self._server_span(method, metadata)
            try:
                with _current(span):
                    try:
                        response = await behavior(request, context)
                        code = context.code() or grpc.StatusCode.OK
                        return response
                    except asyncio.CancelledError:
                        code = grpc.StatusCode.CANCELLED  # the client left or timed out
                        raise
                    except Exception:
                        # An abort has set its code; anything else gRPC answers UNKNOWN.
                        code = context.code() or grpc.StatusCode.UNKNOWN
                        raise
                    finally:
                        if span is not None:
                            _end_status(span, code)
            finally:
                _CALL.reset(token)
                elapsed = time.perf_counter() - started
                self._metrics.request_done(method, GRPC_METHOD, code.name, elapsed)
                if self._access_log is not None:
                    self._log(self._access_log, method, code, elapsed, record, context, metadata)

        return call

    def _server_span(self, method: str, metadata: dict[str, str]) -> Any:
        tracer = self._tracing.tracer
        if tracer is None:
            return None
        service, _, name = method.lstrip("/").partition("/")
        return tracer.start_span(
            method.lstrip("/"),
            context=propagate.extract(metadata),  # traceparent: the client's trace goes on
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )

    def _log(
        self,
        access_log: AccessLog,
        method: str,
        code: grpc.StatusCode,
        elapsed: float,
        record: CallRecord,
        context: grpc.aio.ServicerContext,
        metadata: dict[str, str],
    ) -> None:
        access_log.request(
            {
                "request_id": request_id_from(metadata.get("x-request-id")),
                "method": GRPC_METHOD,
                "route": method,
                "status": code.name,
                "latency_ms": round(elapsed * 1000, 3),
                "images": record.images,
                "model_version": record.model_version,
                "client": _peer(context.peer()),
                "key_id": record.key_id,
            }
        )


def _end_status(span: Any, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAULTS:
        span.set_status(StatusCode.ERROR, code.name)


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):  # "-bin" metadata is bytes: no trace context, no id
            # Repeated keys are one list, as HTTP headers are (tracestate may come in several).
            metadata[key] = f"{metadata[key]},{value}" if key in metadata else value
    return metadata


def _peer(peer: str | None) -> str | None:
    """gRPC's ``ipv4:127.0.0.1:5000`` as REST's ``127.0.0.1:5000``."""
    if not peer:
        return None
    scheme, _, address = peer.partition(":")
    return address if scheme in ("ipv4", "ipv6") else peer


def _current(span: Any) -> AbstractContextManager[Any]:
    if span is None:
        return nullcontext()
    # A client's mistake is no server error: the code decides the span's status, not the
    # exception an abort raises.
    return trace.use_span(
        span, end_on_exit=True, record_exception=False, set_status_on_exception=False
    )
