"""What operations see of a gRPC call, as they see a REST request: its access line and its
request metrics from the real server, its spans from a server in process; Triton's client
calls it on 127.0.0.1 each time."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc  # type: ignore[import-untyped]
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from service.app import create_app
from service.settings import Settings
from service.tracing import Tracing
from tests.metrics_text import Sample, key, samples
from tests.server import Server, free_port, server_process
from tests.test_grpc_e2e import infer_input
from tests.test_operations_e2e import json_lines
from tests.test_tracing import CHILDREN, PARENT_ID, TRACE_ID, TRACEPARENT, request_tree

MAX_IMAGES = 8
SERVICE = "/inference.GRPCInferenceService"
MODEL_INFER = f"{SERVICE}/ModelInfer"


@pytest.fixture(scope="module")
def served(trained_model_path: Path) -> Iterator[tuple[Server, Any]]:
    """One worker logging JSON, and a gRPC client of it."""
    grpc_port = free_port()
    with (
        server_process(
            trained_model_path,
            MNIST_WORKERS="1",
            MNIST_GRPC_PORT=str(grpc_port),
            MNIST_LOG_FORMAT="json",
            MNIST_MAX_IMAGES_PER_REQUEST=str(MAX_IMAGES),
        ) as server,
        triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client,
    ):
        yield server, client


def zeros(n: int) -> Any:
    return infer_input(np.zeros((n, 28, 28, 1), np.uint8))


def bad_shape() -> Any:
    tensor = triton_grpc.InferInput("image", [1, 784], "UINT8")
    tensor._raw_content = bytes(784)  # set_data_from_numpy would refuse the wrong shape
    return tensor


def refused(client: Any, tensor: Any, **kwargs: Any) -> str:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("mnist", [tensor], **kwargs)
    return str(caught.value.status())


def access_lines(server: Server, request_id: str) -> list[dict[str, Any]]:
    """The access lines of ``request_id``, once there are any: each is written as its call
    ends, and read from the server's output by a thread."""
    deadline = time.monotonic() + 10
    while True:
        lines = [
            line
            for line in json_lines(list(server.output))
            if line["logger"] == "service.access" and line.get("request_id") == request_id
        ]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def scrape(server: Server) -> dict[Sample, float]:
    return samples(httpx.get(f"{server.url}/metrics", timeout=10).text)


def grown(
    before: dict[Sample, float], after: dict[Sample, float], name: str, **labels: str
) -> float:
    sample = key(name, **labels)
    return after.get(sample, 0.0) - before.get(sample, 0.0)


@pytest.mark.e2e
def test_an_infer_call_leaves_one_access_line_with_its_status_images_and_version(
    served: tuple[Server, Any],
) -> None:
    server, client = served
    client.infer("mnist", [zeros(3)], headers={"x-request-id": "grpc-ok"})
    assert refused(client, bad_shape(), headers={"x-request-id": "grpc-bad"}) == (
        "StatusCode.INVALID_ARGUMENT"
    )
    [ok] = access_lines(server, "grpc-ok")
    assert ok["message"] == "request"
    assert (ok["method"], ok["route"], ok["status"]) == ("GRPC", MODEL_INFER, "OK")
    assert (ok["images"], ok["model_version"]) == (3, "1")
    assert ok["client"].startswith("127.0.0.1:")
    assert ok["latency_ms"] > 0
    assert ok["key_id"] is None  # no keys set
    [bad] = access_lines(server, "grpc-bad")
    assert (bad["route"], bad["status"]) == (MODEL_INFER, "INVALID_ARGUMENT")
    assert bad["images"] is None  # refused before it had images


@pytest.mark.e2e
def test_the_metrics_count_grpc_calls_by_method_and_status(served: tuple[Server, Any]) -> None:
    server, client = served
    before = scrape(server)
    for _ in range(2):
        client.infer("mnist", [zeros(2)])
    assert refused(client, bad_shape()) == "StatusCode.INVALID_ARGUMENT"
    too_many = refused(client, zeros(MAX_IMAGES + 1))
    assert too_many == "StatusCode.INVALID_ARGUMENT"
    assert refused(client, zeros(1), model_version="2") == "StatusCode.NOT_FOUND"
    assert client.is_server_live()
    after = scrape(server)

    def calls(method: str, status: str) -> float:
        labels = {"route": f"{SERVICE}/{method}", "method": "GRPC", "status": status}
        return grown(before, after, "mnist_http_requests_total", **labels)

    assert calls("ModelInfer", "OK") == 2
    assert calls("ModelInfer", "INVALID_ARGUMENT") == 2
    assert calls("ModelInfer", "NOT_FOUND") == 1
    assert calls("ServerLive", "OK") == 1
    latency = grown(before, after, "mnist_http_request_duration_seconds_count", route=MODEL_INFER)
    assert latency == 5
    # Too many images is INVALID_ARGUMENT over gRPC, and counted by its reason as REST's 413.
    assert grown(before, after, "mnist_rejected_requests_total", reason="too_large") == 1
    assert grown(before, after, "mnist_images_predicted_total", version="1") == 4


def finished_call(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    """The spans of the call just made, once its server span has ended: an abort sends its
    status before the interceptor ends the span, on the server's own thread."""
    deadline = time.monotonic() + 10
    while True:
        finished = exporter.get_finished_spans()
        if any(s.kind is SpanKind.SERVER for s in finished) or time.monotonic() > deadline:
            return finished
        time.sleep(0.01)


@pytest.fixture(scope="module")
def traced_client(
    trained_model_path: Path,
) -> Iterator[tuple[Any, InMemorySpanExporter]]:
    """A gRPC client of an app in process, whose spans stay in memory."""
    exporter = InMemorySpanExporter()
    grpc_port = free_port()
    settings = Settings(
        model_path=trained_model_path, device="cpu", host="127.0.0.1", grpc_port=grpc_port
    )
    with (
        TestClient(create_app(settings, Tracing(exporters=[exporter]))),
        triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client,
    ):
        yield client, exporter


def test_with_tracing_on_a_model_infer_call_is_a_server_span_in_the_clients_trace(
    traced_client: tuple[Any, InMemorySpanExporter],
) -> None:
    client, exporter = traced_client
    exporter.clear()
    client.infer("mnist", [zeros(2)], headers={"traceparent": TRACEPARENT})
    finished = finished_call(exporter)
    server, children = request_tree(finished)
    assert server.name == MODEL_INFER.lstrip("/")
    assert dict(server.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": "ModelInfer",
        "rpc.grpc.status_code": 0,
        "mnist.model.version": "1",
    }
    assert [c.name for c in children] == CHILDREN
    assert (children[2].attributes or {})["mnist.request.images"] == 2
    assert server.parent is not None
    assert server.parent.is_remote
    assert f"{server.parent.span_id:016x}" == PARENT_ID
    assert {f"{s.context.trace_id:032x}" for s in finished if s.context} == {TRACE_ID}


def test_a_refused_call_marks_its_decode_span_but_is_no_server_error(
    traced_client: tuple[Any, InMemorySpanExporter],
) -> None:
    client, exporter = traced_client
    exporter.clear()
    assert refused(client, bad_shape()) == "StatusCode.INVALID_ARGUMENT"
    server, [decode] = request_tree(finished_call(exporter))
    assert (server.attributes or {})["rpc.grpc.status_code"] == 3
    assert server.status.status_code is not StatusCode.ERROR
    assert decode.name == "decode"
    assert decode.status.status_code is StatusCode.ERROR


def test_a_call_past_its_deadline_is_deadline_exceeded_and_counted_by_reason(
    trained_model_path: Path,
) -> None:
    # 100 ns: gone by the time the request is decoded, so the batcher refuses it unrun.
    grpc_port = free_port()
    settings = Settings(
        model_path=trained_model_path,
        device="cpu",
        host="127.0.0.1",
        grpc_port=grpc_port,
        request_timeout_ms=0.0001,
    )
    with (
        TestClient(create_app(settings)) as rest,
        triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client,
    ):
        assert refused(client, zeros(1)) == "StatusCode.DEADLINE_EXCEEDED"
        metrics = rest.get("/metrics").text
    assert 'mnist_rejected_requests_total{reason="deadline"} 1.0' in metrics
    assert (
        f'mnist_http_requests_total{{method="GRPC",route="{MODEL_INFER}",'
        'status="DEADLINE_EXCEEDED"} 1.0'
    ) in metrics
