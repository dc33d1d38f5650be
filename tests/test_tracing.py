"""OpenTelemetry traces: in-process with the SDK's in-memory exporter, then a real server
exporting over OTLP/HTTP to a receiver this test runs on 127.0.0.1."""

import itertools
import logging
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.app import create_app
from service.settings import Settings
from service.tracing import Tracing, requested_exporters
from tests.server import server_process
from training.data import RawSplit

CHILDREN = ["decode", "queue wait", "inference", "encode"]
# A caller's trace: W3C trace context, version 00, sampled.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def client(trained_model_path: Path, exporter: InMemorySpanExporter) -> Iterator[TestClient]:
    settings = Settings(model_path=trained_model_path, device="cpu")
    app = create_app(settings, Tracing(exporters=[exporter]))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


def request_tree(finished: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one server span, and its children in start order."""
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    assert server.context is not None
    children = [s for s in finished if s.parent and s.parent.span_id == server.context.span_id]
    assert len(children) == len(finished) - 1, "every other span is a child of the request"
    return server, sorted(children, key=lambda s: s.start_time or 0)


def test_a_prediction_is_a_server_span_with_decode_queue_wait_inference_and_encode(
    client: TestClient, spans: InMemorySpanExporter, mnist_test_digits: RawSplit
) -> None:
    digits = mnist_test_digits.images[:3]
    response = client.post("/predict", json={"images": digits.tolist()})
    assert response.status_code == 200, response.text
    server, children = request_tree(spans.get_finished_spans())
    assert server.name == "POST /predict"
    assert dict(server.attributes or {}) == {
        "http.request.method": "POST",
        "url.path": "/predict",
        "http.route": "/predict",
        "http.response.status_code": 200,
        "mnist.model.version": "1",
    }
    assert [c.name for c in children] == CHILDREN
    inference = children[2].attributes or {}
    assert inference["mnist.batch.images"] == 3
    assert inference["mnist.request.images"] == 3
    assert inference["mnist.batch.requests"] == 1
    assert inference["onnxruntime.provider"] == "CPUExecutionProvider"
    assert inference["mnist.model.version"] == "1"
    assert inference["mnist.model.id"] == response.json()["model"]
    assert children[1].attributes == {"mnist.batch.images": 3}
    assert server.resource.attributes["service.name"] == "mnist-serving"


def test_the_steps_follow_one_another_inside_the_request_span(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    assert client.post("/predict", json={"image": [0.5] * 784}).status_code == 200
    server, children = request_tree(spans.get_finished_spans())
    times = [(c.start_time or 0, c.end_time or 0) for c in children]
    assert (server.start_time or 0) <= times[0][0]
    for (start, end), (next_start, _) in itertools.pairwise(times):
        assert start <= end <= next_start
    # The wait ends as the batch starts: both come from the batcher's one clock reading.
    assert times[1][1] == times[2][0]
    assert times[-1][1] <= (server.end_time or 0)


def test_an_incoming_traceparent_is_continued(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    response = client.post(
        "/predict", json={"image": [0] * 784}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200
    finished = spans.get_finished_spans()
    server, _ = request_tree(finished)
    assert server.parent is not None
    assert server.parent.is_remote
    assert f"{server.parent.span_id:016x}" == PARENT_ID
    assert {f"{s.context.trace_id:032x}" for s in finished if s.context} == {TRACE_ID}


def test_the_open_inference_protocol_infer_route_has_the_same_spans(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    body = {
        "inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [2, 28, 28, 1], "data": [0] * 1568}
        ]
    }
    response = client.post("/v2/models/mnist/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    server, children = request_tree(spans.get_finished_spans())
    assert server.name == "POST /v2/models/{model_name}/versions/{model_version}/infer"
    assert (server.attributes or {})["mnist.model.version"] == "1"
    assert [c.name for c in children] == CHILDREN
    assert (children[2].attributes or {})["mnist.batch.images"] == 2


def test_a_body_that_fails_to_decode_marks_the_decode_span_and_the_status(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    response = client.post(
        "/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    server, children = request_tree(spans.get_finished_spans())
    assert (server.attributes or {})["http.response.status_code"] == 400
    assert "mnist.model.version" not in (server.attributes or {})
    # A client's mistake is no server error; the step that refused the body says why.
    assert server.status.status_code is not StatusCode.ERROR
    [decode] = children
    assert decode.name == "decode"
    assert decode.status.status_code is StatusCode.ERROR
    assert "not valid JSON" in str(decode.events[0].attributes)


def test_routes_without_inference_get_a_server_span_named_by_their_template(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    assert client.get("/v2/models/mnist/versions/1").status_code == 200
    assert client.get("/no/such/page").status_code == 404
    named, unmatched = spans.get_finished_spans()
    assert named.name == "GET /v2/models/{model_name}/versions/{model_version}"
    assert unmatched.name == "GET"
    assert "http.route" not in (unmatched.attributes or {})
    assert (unmatched.attributes or {})["http.response.status_code"] == 404


def test_a_body_over_the_limit_is_traced_too(trained_model_path: Path) -> None:
    exporter = InMemorySpanExporter()
    settings = Settings(model_path=trained_model_path, device="cpu", max_body_bytes=1024)
    with TestClient(create_app(settings, Tracing(exporters=[exporter]))) as client:
        response = client.post("/predict", content=b"0" * 2048)
        assert response.status_code == 413
        [span] = exporter.get_finished_spans()
    assert (span.attributes or {})["http.response.status_code"] == 413


def test_requests_batched_together_each_draw_the_shared_batch_in_their_own_trace(
    trained_model_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    # The batch closes once it holds all six images below, whenever they come within 10 s.
    settings = Settings(
        model_path=trained_model_path, device="cpu", batch_max_size=6, batch_max_delay_ms=10_000
    )
    with (
        TestClient(create_app(settings, Tracing(exporters=[exporter]))) as client,
        ThreadPoolExecutor(3) as pool,
    ):
        sizes = [1, 2, 3]
        bodies = [{"images": [[0] * 784] * n} for n in sizes]
        responses = list(pool.map(lambda body: client.post("/predict", json=body), bodies))
    assert [r.status_code for r in responses] == [200, 200, 200]
    finished = exporter.get_finished_spans()
    inferences = [s for s in finished if s.name == "inference"]
    assert len({s.context.trace_id for s in inferences if s.context}) == 3
    assert {(s.start_time, s.end_time) for s in inferences} == {
        (inferences[0].start_time, inferences[0].end_time)
    }
    mine = []
    for span in inferences:
        attributes = span.attributes or {}
        assert attributes["mnist.batch.images"] == 6
        assert attributes["mnist.batch.requests"] == 3
        mine.append(attributes["mnist.request.images"])
    assert sorted(mine, key=str) == sizes


def test_the_otel_variables_decide_whether_traces_are_on() -> None:
    assert requested_exporters({}) == []
    assert requested_exporters({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert requested_exporters({"OTEL_TRACES_EXPORTER": "otlp, console"}) == ["otlp", "console"]
    assert requested_exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) == ["otlp"]
    assert requested_exporters({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x/v1/t"}) == ["otlp"]
    disabled = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    assert requested_exporters(disabled) == []


def test_without_otel_variables_tracing_is_off_and_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracing = Tracing()
    with caplog.at_level(logging.DEBUG, logger="service"):
        tracing.start({})
    assert tracing.tracer is None
    assert caplog.records == []


async def test_tracing_asked_for_without_the_sdk_is_off_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # What the service image is: FastAPI brings the OpenTelemetry API, nothing brings the SDK.
    for module in ("opentelemetry.sdk.resources", "opentelemetry.sdk.trace"):
        monkeypatch.setitem(sys.modules, module, None)
    tracing = Tracing()
    with caplog.at_level(logging.INFO, logger="service"):
        tracing.start({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.tracer is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "the `otel` extra" in record.getMessage()
    with tracing.span("decode"):
        pass
    await tracing.shutdown()


def test_an_unsupported_otlp_protocol_leaves_tracing_off_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracing = Tracing()
    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with caplog.at_level(logging.INFO, logger="service"):
        tracing.start(environ)
    assert tracing.tracer is None
    [record] = caplog.records
    assert "'grpc' is not supported" in record.getMessage()


# --------------------------------------------------------------------------------------
# A real server exporting over OTLP/HTTP.
# --------------------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint: keeps every span it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.requests: list[ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
            self.send_error(404 if self.path != "/v1/traces" else 415)
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.server.lock:
            self.server.requests.append(request)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: pytest shows the test's own output


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def value(any_value: AnyValue) -> object:
    return getattr(any_value, any_value.WhichOneof("value") or "string_value")


def attributes(pairs: list[KeyValue]) -> dict[str, object]:
    return {pair.key: value(pair.value) for pair in pairs}


@pytest.mark.e2e
def test_a_real_server_exports_its_spans_over_otlp_http_when_it_stops(
    trained_model_path: Path, receiver: Receiver
) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "mnist-tracing-test",
        # Nothing leaves on schedule: only the flush at shutdown can deliver the spans.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "MNIST_WORKERS": "1",
    }
    with server_process(trained_model_path, **env) as server:
        for n in (1, 2, 3):
            response = httpx.post(
                f"{server.url}/predict",
                json={"images": np.zeros((n, 784), np.uint8).tolist()},
                headers={"traceparent": TRACEPARENT} if n == 1 else {},
                timeout=10,
            )
            assert response.status_code == 200, response.text
        with receiver.lock:
            assert receiver.requests == [], "exported before shutdown"
    with receiver.lock:
        exports = list(receiver.requests)
    resources = [r for export in exports for r in export.resource_spans]
    assert {attributes(list(r.resource.attributes))["service.name"] for r in resources} == {
        "mnist-tracing-test"
    }
    spans = [s for r in resources for scope in r.scope_spans for s in scope.spans]
    requests = [s for s in spans if s.name == "POST /predict"]
    assert len(requests) == 3
    for request in requests:
        children = sorted(
            (s for s in spans if s.parent_span_id == request.span_id),
            key=lambda s: s.start_time_unix_nano,
        )
        assert [c.name for c in children] == CHILDREN
        assert {c.trace_id for c in children} == {request.trace_id}
        assert attributes(list(request.attributes))["mnist.model.version"] == "1"
        inference = attributes(list(children[2].attributes))
        assert inference["onnxruntime.provider"] == "CPUExecutionProvider"
        assert inference["mnist.model.version"] == "1"
    batch_images = [
        attributes(list(s.attributes))["mnist.batch.images"] for s in spans if s.name == "inference"
    ]
    assert sorted(batch_images, key=str) == [1, 2, 3]
    continued = [r for r in requests if r.trace_id.hex() == TRACE_ID]
    assert len(continued) == 1
    assert continued[0].parent_span_id.hex() == PARENT_ID
