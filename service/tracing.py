"""OpenTelemetry traces: a server span per request, with spans for decode, queue wait,
inference and encode.

Optional: the SDK and the OTLP exporter come with the ``otel`` extra, and are imported only
when the standard ``OTEL_*`` variables ask for traces (``OTEL_TRACES_EXPORTER``, or an OTLP
endpoint). Everything else (sampler, endpoint, headers, batching, resource) the SDK reads
from those variables itself. Off, each request pays one attribute check.
"""

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batcher import Inference

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from starlette.requests import Request

    from service.models.served import ServedVersion

logger = logging.getLogger("service")

SERVICE_NAME = "mnist-serving"
MODEL_VERSION = "mnist.model.version"
_OFF: AbstractContextManager[Any] = nullcontext()


def requested_exporters(environ: Mapping[str, str]) -> list[str]:
    """The exporters the standard variables name; none unless they ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER")
    if names is None:
        # An endpoint alone means OTLP: OTLP is the specification's default exporter.
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    return [n for n in (name.strip().lower() for name in names.split(",")) if n and n != "none"]


class Tracing:
    """The app's tracer provider: built at start-up, flushed and shut down at shutdown.

    ``exporters`` (tests) replaces what the environment asks for, each exporting span by
    span; exporters from the environment export in batches, off the request path.
    """

    def __init__(self, exporters: Sequence["SpanExporter"] = ()):
        self._exporters = exporters
        self._provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None

    def start(self, environ: Mapping[str, str] = os.environ) -> None:
        """``environ`` decides whether to trace and to which exporters; the SDK reads the
        rest (service name, sampler, endpoint...) from the process environment itself."""
        names = [] if self._exporters else requested_exporters(environ)
        if not names and not self._exporters:
            return
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        except ImportError:
            logger.warning(
                "OTEL_TRACES_EXPORTER or an OTLP endpoint asks for traces, but the "
                "OpenTelemetry SDK is not installed (the `otel` extra): tracing is off"
            )
            return
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        # The sampler comes from OTEL_TRACES_SAMPLER. No exit hook: shutdown() flushes, and a
        # hook would keep every app's provider alive for the life of the process.
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for exporter in self._exporters:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        started = []
        for name in names:
            made = _exporter(name, environ)
            if made is not None:
                provider.add_span_processor(BatchSpanProcessor(made))
                started.append(name)
        if not self._exporters and not started:
            provider.shutdown()
            return
        self._provider = provider
        self.tracer = provider.get_tracer(__name__)
        if started:
            logger.info(
                "tracing on: %s exporter(s), service.name %s",
                ", ".join(started),
                resource.attributes["service.name"],
            )

    async def shutdown(self) -> None:
        """Export what is still buffered; off the loop, as the export may take seconds."""
        provider, self._provider, self.tracer = self._provider, None, None
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)

    def span(self, name: str) -> AbstractContextManager[Any]:
        """A child span of the current one, for a step of the request; nothing when off."""
        if self.tracer is None:
            return _OFF
        return self.tracer.start_as_current_span(name)

    def record_inference(self, result: Inference, served: "ServedVersion") -> None:
        """Adds the job's ``queue wait`` and ``inference`` spans to the current request, with
        the times the batcher recorded, and names the model version on the request span."""
        if self.tracer is None:
            return
        request = trace.get_current_span()
        request.set_attribute(MODEL_VERSION, served.name)
        batch = result.batch
        waited = self.tracer.start_span(
            "queue wait",
            start_time=result.queued_ns,
            attributes={"mnist.batch.images": batch.images},
        )
        waited.end(end_time=batch.started_ns)
        inference = self.tracer.start_span(
            "inference",
            start_time=batch.started_ns,
            attributes={
                "mnist.batch.images": batch.images,
                "mnist.batch.requests": batch.jobs,
                "mnist.request.images": len(result.probabilities),
                "onnxruntime.provider": served.provider,
                MODEL_VERSION: served.name,
                "mnist.model.id": served.model_id,
            },
        )
        inference.end(end_time=batch.finished_ns)


def traced(request: "Request") -> Tracing:
    """The app's tracing, read from the app rather than injected: a FastAPI dependency
    costs some 10-30 us a request, far more than all of tracing does when off."""
    tracing: Tracing = request.app.state.tracing
    return tracing


def _exporter(name: str, environ: Mapping[str, str]) -> "SpanExporter | None":
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        if protocol.strip() != "http/protobuf":
            logger.warning(
                "OTLP protocol %r is not supported, only http/protobuf: spans are not exported "
                "over OTLP",
                protocol,
            )
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            logger.warning(
                "OTEL_TRACES_EXPORTER=otlp but the OTLP exporter is not installed (the `otel` "
                "extra): spans are not exported over OTLP"
            )
            return None
        return OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
    logger.warning("trace exporter %r is not one of otlp, console, none: ignored", name)
    return None


class TracingMiddleware:
    """The server span of each request, continuing the caller's trace (``traceparent``)."""

    def __init__(self, app: ASGIApp, tracing: Tracing):
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = self.tracing.tracer
        if tracer is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        span = tracer.start_span(
            method,
            context=propagate.extract(_headers(scope)),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        status: int | None = None

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with trace.use_span(span, end_on_exit=True):
            try:
                await self.app(scope, receive, send_with_status)
            finally:
                # The router has matched by now: a template, not the raw path, names the span.
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        # Repeated headers are one list (tracestate may come in several).
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers
