"""Early shedding: requests over the in-flight limit are refused before their body is read."""

import asyncio
import time
from pathlib import Path

import orjson
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import AdmissionMiddleware, InflightLimit
from service.app import create_app
from service.deadlines import REQUEST_DEADLINE
from service.metrics import Metrics
from service.settings import Settings


class HeldApp:
    """Answers 200 once released; records the deadline each request saw."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.deadlines: list[float | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.deadlines.append(REQUEST_DEADLINE.get())
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def scope(path: str, method: str = "POST") -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": [], "state": {}}


async def call(app: AdmissionMiddleware, request: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the body of a refused request must not be read")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(request, receive, send)
    return sent


def admitting(inner: ASGIApp, limit: int, timeout_s: float) -> AdmissionMiddleware:
    metrics = Metrics()
    return AdmissionMiddleware(inner, InflightLimit(limit, metrics), timeout_s, metrics)


async def test_requests_over_the_inflight_limit_get_503_before_their_body_is_read() -> None:
    inner, metrics = HeldApp(), Metrics()
    app = AdmissionMiddleware(inner, InflightLimit(2, metrics), timeout_s=0, metrics=metrics)
    held = [asyncio.create_task(call(app, scope("/predict"))) for _ in range(2)]
    await asyncio.sleep(0)
    refused = await call(app, scope("/predict"))
    assert refused[0]["status"] == 503
    assert (b"retry-after", b"1") in refused[0]["headers"]
    detail = orjson.loads(refused[1]["body"])["detail"]
    assert "MNIST_MAX_INFLIGHT_REQUESTS" in detail
    protocol = await call(app, scope("/v2/models/mnist/versions/1/infer"))
    assert "error" in orjson.loads(protocol[1]["body"])
    assert metrics.rejected.labels("inflight_limit")._value.get() == 2
    inner.release.set()
    assert [(await task)[0]["status"] for task in held] == [200, 200]
    # Room again once those finished.
    assert (await call(app, scope("/predict")))[0]["status"] == 200


async def test_other_routes_are_never_counted_nor_refused() -> None:
    inner = HeldApp()
    app = admitting(inner, 1, 0)
    held = asyncio.create_task(call(app, scope("/predict")))
    await asyncio.sleep(0)
    others = [
        asyncio.create_task(call(app, scope(path, method)))
        for path, method in [("/metrics", "GET"), ("/v2/repository/index", "POST")]
    ]
    await asyncio.sleep(0)
    assert app.limit.inflight == 1
    inner.release.set()
    assert all(m[0]["status"] == 200 for m in await asyncio.gather(held, *others))


async def test_each_admitted_request_carries_its_deadline() -> None:
    inner = HeldApp()
    inner.release.set()
    app = admitting(inner, 4, 2.0)
    before = time.perf_counter()
    await call(app, scope("/predict"))
    [deadline] = inner.deadlines
    assert deadline is not None
    assert before + 2.0 <= deadline <= time.perf_counter() + 2.0
    assert REQUEST_DEADLINE.get() is None, "the deadline must not outlive its request"
    unlimited = admitting(inner, 4, 0)
    await call(unlimited, scope("/predict"))
    assert inner.deadlines[-1] is None


# A bar three pixels wide: the model reads it as a 1.
BAR = [[1.0 if 13 <= c <= 15 and 4 <= r <= 23 else 0.0 for c in range(28)] for r in range(28)]


def test_a_request_past_its_deadline_gets_504_and_is_counted(trained_model_path: Path) -> None:
    # 100 ns: gone by the time the body is parsed, so the batcher refuses it unrun.
    settings = Settings(
        model_path=trained_model_path,
        device="cpu",
        request_timeout_ms=0.0001,
        max_images_per_request=1,
    )
    with TestClient(create_app(settings)) as client:
        late = client.post("/predict", json={"image": BAR})
        assert late.status_code == 504
        assert "MNIST_REQUEST_TIMEOUT_MS" in late.json()["detail"]
        too_many = client.post("/predict", json={"images": [BAR, BAR]})
        assert too_many.status_code == 413
        metrics = client.get("/metrics").text
    assert 'mnist_rejected_requests_total{reason="deadline"} 1.0' in metrics
    assert 'mnist_rejected_requests_total{reason="too_large"} 1.0' in metrics
