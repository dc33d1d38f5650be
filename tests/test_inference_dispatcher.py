"""The inference dispatcher answers exactly as FastAPI's routes did, and every middleware
still sees what it serves.

Each answer is compared with the same app built without the dispatcher, where FastAPI's
router serves the very same routes: status, headers in order and body, byte for byte.
"""

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton  # type: ignore[import-untyped]
from fastapi import FastAPI
from PIL import Image
from starlette.types import Message

from service.app import create_app
from service.inference_dispatcher import InferenceDispatcher
from service.logs import ACCESS_LOGGER
from service.settings import Settings
from tests.test_operations_e2e import json_lines

REQUEST_ID = "dispatcher-test"
JSON = "application/json"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    routed_by_fastapi: bool  # FastAPI's router leaves itself in the scope


Call = Callable[..., Coroutine[Any, Any, Answer]]


def settings_for(model: Path, **overrides: Any) -> Settings:
    return Settings(
        model_path=model,
        device="cpu",
        access_log=True,
        max_images_per_request=4,
        **overrides,
    )


def without_dispatcher(app: FastAPI) -> FastAPI:
    """The app as it was before the dispatcher: FastAPI's router serves every request."""
    dispatcher: object = InferenceDispatcher
    app.user_middleware = [m for m in app.user_middleware if m.cls is not dispatcher]
    return app


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[Call]:
    async with app.router.lifespan_context(app):

        async def call(
            path: str,
            body: bytes = b"",
            content_type: str | None = JSON,
            *,
            method: str = "POST",
            query: bytes = b"",
            headers: tuple[tuple[bytes, bytes], ...] = (),
            chunks: list[bytes] | None = None,
            release: asyncio.Event | None = None,
        ) -> Answer:
            request_headers = [(b"x-request-id", REQUEST_ID.encode()), *headers]
            if content_type is not None:
                request_headers.append((b"content-type", content_type.encode()))
            if chunks is None:
                chunks = [body]
                request_headers.append((b"content-length", str(len(body)).encode()))
            scope: dict[str, Any] = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": method,
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": query,
                "root_path": "",
                "headers": request_headers,
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
            }
            pending = list(chunks)
            sent: list[Message] = []

            async def receive() -> Message:
                if release is not None:
                    await release.wait()
                if pending:
                    chunk = pending.pop(0)
                    return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
                await asyncio.Event().wait()  # no more: a client that stays connected
                raise AssertionError("unreachable")

            async def send(message: Message) -> None:
                sent.append(message)

            await app(scope, receive, send)
            start, *bodies = sent
            return Answer(
                start["status"],
                list(start["headers"]),
                b"".join(m.get("body", b"") for m in bodies),
                "router" in scope,
            )

        yield call


@pytest.fixture
async def both(trained_model_path: Path) -> AsyncIterator[tuple[Call, Call]]:
    """(served by the dispatcher, served by FastAPI's router), same settings."""
    settings = settings_for(trained_model_path)
    async with (
        serving(create_app(settings)) as dispatched,
        serving(without_dispatcher(create_app(settings))) as routed,
    ):
        yield dispatched, routed


async def same_answer(both: tuple[Call, Call], *args: Any, **kwargs: Any) -> Answer:
    dispatched, routed = both
    fast, slow = await dispatched(*args, **kwargs), await routed(*args, **kwargs)
    assert not fast.routed_by_fastapi, "the dispatcher left this request to FastAPI"
    assert slow.routed_by_fastapi
    assert (fast.status, fast.headers, fast.body) == (slow.status, slow.headers, slow.body)
    return fast


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = "dispatcherboundary"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    )
    return parts + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def v2_body(images: np.ndarray, binary: bool) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    tensor = triton.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor])
    headers = (
        () if json_size is None else ((b"inference-header-content-length", b"%d" % json_size),)
    )
    return body, headers


def one_digit(digits: Any) -> bytes:
    return json.dumps({"image": digits.images[0].tolist()}).encode()


async def test_predict_answers_json_and_image_files_byte_for_byte_as_fastapi_did(
    both: tuple[Call, Call], mnist_test_digits: Any
) -> None:
    answer = await same_answer(both, "/predict", one_digit(mnist_test_digits))
    assert answer.status == 200
    assert json.loads(answer.body)["predictions"][0]["digit"] == mnist_test_digits.labels[0]
    batch = json.dumps({"images": mnist_test_digits.images[:3].tolist()}).encode()
    assert (await same_answer(both, "/predict", batch)).status == 200
    form, content_type = multipart([png(image) for image in mnist_test_digits.images[:2]])
    assert (await same_answer(both, "/predict", form, content_type)).status == 200
    raw = png(mnist_test_digits.images[0])
    assert (await same_answer(both, "/predict", raw, "image/png")).status == 200


BLANK = json.dumps({"image": [0] * 784}).encode()
FORM, FORM_TYPE = multipart([b"x"] * 6)  # more files than a request may carry (4)
OCTETS = "application/octet-stream"
BAD_PREDICTS: list[tuple[str, dict[str, Any], int]] = [
    ("invalid JSON", {"body": b"{not json"}, 400),
    ("wrong shape", {"body": b'{"image": [0.5, 0.5]}'}, 422),
    ("too many images", {"body": json.dumps({"images": [[0] * 784] * 5}).encode()}, 413),
    ("no content type", {"body": b"abc", "content_type": None}, 415),
    ("a version not ready", {"body": BLANK, "query": b"version=9"}, 404),
    ("a version that is no number", {"body": b"{}", "query": b"version=x"}, 422),
    ("a tensor without its shape", {"body": b"\0" * 784, "content_type": OCTETS}, 400),
    ("too many form files", {"body": FORM, "content_type": FORM_TYPE}, 413),
    ("a body over the limit, streamed", {"chunks": [b" " * 9_000_000] * 2}, 413),
]


@pytest.mark.parametrize(("what", "request_args", "status"), BAD_PREDICTS)
async def test_predict_refuses_bad_input_byte_for_byte_as_fastapi_did(
    both: tuple[Call, Call], what: str, request_args: dict[str, Any], status: int
) -> None:
    answer = await same_answer(both, "/predict", **request_args)
    assert answer.status == status, what
    body = json.loads(answer.body)
    assert set(body) == {"detail", "request_id"}
    assert body["request_id"] == REQUEST_ID


async def test_the_protocols_infer_answers_byte_for_byte_as_fastapi_did(
    both: tuple[Call, Call], mnist_test_digits: Any
) -> None:
    images = mnist_test_digits.images[:2, :, :, np.newaxis]
    for path in ("/v2/models/mnist/infer", "/v2/models/mnist/versions/1/infer"):
        for binary in (False, True):
            body, headers = v2_body(images, binary)
            content_type = "application/octet-stream" if binary else JSON
            answer = await same_answer(both, path, body, content_type, headers=headers)
            assert answer.status == 200, answer.body


BLANK_TENSOR = {"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8", "data": [0] * 784}
BOOL_TENSOR = {"name": "image", "shape": [1], "datatype": "BOOL", "data": [1]}
BAD_INFERS: list[tuple[str, bytes, int]] = [
    ("/v2/models/other/infer", b"{}", 404),
    ("/v2/models/mnist/versions/9/infer", json.dumps({"inputs": [BLANK_TENSOR]}).encode(), 404),
    ("/v2/models/mnist/versions/0/infer", b'{"inputs": []}', 404),
    ("/v2/models/mnist/infer", b"{not json", 400),
    ("/v2/models/mnist/infer", json.dumps({"inputs": [BOOL_TENSOR]}).encode(), 400),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD_INFERS)
async def test_the_protocols_infer_refuses_bad_input_byte_for_byte_as_fastapi_did(
    both: tuple[Call, Call], path: str, body: bytes, status: int
) -> None:
    answer = await same_answer(both, path, body)
    assert answer.status == status
    assert set(json.loads(answer.body)) == {"error", "request_id"}


async def test_a_failure_of_ours_is_answered_as_fastapi_answered_it(
    trained_model_path: Path, mnist_test_digits: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(trained_model_path)
    apps = [create_app(settings), without_dispatcher(create_app(settings))]

    def broken(version: int | None) -> Any:
        raise RuntimeError("the repository broke")

    async with serving(apps[0]) as dispatched, serving(apps[1]) as routed:
        for app in apps:
            app.state.repository.resolve = broken
        body, _ = v2_body(mnist_test_digits.images[:1, :, :, np.newaxis], False)
        fast, slow = [await call("/v2/models/mnist/infer", body) for call in (dispatched, routed)]
        assert (fast.status, fast.headers, fast.body) == (slow.status, slow.headers, slow.body)
        assert fast.status == 500
        assert b"internal server error" in fast.body
        failures = [r for r in caplog.records if "failed" in r.getMessage()]
        # Logged with its traceback, once by each.
        assert [type(r.exc_info[1]) for r in failures if r.exc_info] == [RuntimeError] * 2
        # /predict's stays unhandled, for Starlette's outermost middleware to answer 500.
        for call in (dispatched, routed):
            with pytest.raises(RuntimeError, match="the repository broke"):
                await call("/predict", one_digit(mnist_test_digits))


async def test_the_access_log_and_metrics_see_dispatched_requests_by_their_route(
    trained_model_path: Path, mnist_test_digits: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings_for(trained_model_path, log_format="json"))
    async with serving(app) as call:
        capsys.readouterr()
        await call("/predict", one_digit(mnist_test_digits))
        await call("/predict", b"{not json")
        body, headers = v2_body(mnist_test_digits.images[:2, :, :, np.newaxis], True)
        await call("/v2/models/mnist/versions/1/infer", body, headers=headers)
        metrics = (await call("/metrics", method="GET", content_type=None)).body.decode()
    documents = json_lines(capsys.readouterr().out.splitlines())
    lines = [d for d in documents if d["logger"] == ACCESS_LOGGER and d["message"] == "request"]
    seen = [(d["route"], d["status"], d["images"], d["model_version"]) for d in lines][:3]
    assert seen == [
        ("/predict", 200, 1, "1"),
        ("/predict", 400, None, None),
        ("/v2/models/{model_name}/versions/{model_version}/infer", 200, 2, "1"),
    ]
    assert all(d["request_id"] == REQUEST_ID for d in lines)
    for route, status in [
        ("/predict", "200"),
        ("/predict", "400"),
        ("/v2/models/{model_name}/versions/{model_version}/infer", "200"),
    ]:
        assert (
            f'mnist_http_requests_total{{method="POST",route="{route}",status="{status}"}}'
            in metrics
        )


async def test_requests_over_the_inflight_cap_are_refused_while_dispatched_ones_run(
    trained_model_path: Path, mnist_test_digits: Any
) -> None:
    app = create_app(settings_for(trained_model_path, max_inflight_requests=1))
    async with serving(app) as call:
        release = asyncio.Event()
        held = asyncio.create_task(call("/predict", one_digit(mnist_test_digits), release=release))
        await asyncio.sleep(0.05)  # the held request is in, waiting for its body
        refused = await call("/v2/models/mnist/infer", b"{}")
        release.set()
        answered = await held
    assert refused.status == 503
    assert (b"retry-after", b"1") in refused.headers
    assert "MNIST_MAX_INFLIGHT_REQUESTS" in json.loads(refused.body)["error"]
    assert answered.status == 200
    assert not answered.routed_by_fastapi


async def test_other_requests_are_left_to_fastapi(trained_model_path: Path) -> None:
    app = create_app(settings_for(trained_model_path))
    async with serving(app) as call:
        for method, path in [
            ("GET", "/predict"),
            ("POST", "/predict/"),
            ("POST", "/v2/models/mnist/extra/infer"),
            ("GET", "/v2/models/mnist/infer"),
            ("GET", "/openapi.json"),
        ]:
            answer = await call(path, method=method, content_type=None)
            assert answer.routed_by_fastapi, (method, path)
        document = json.loads((await call("/openapi.json", method="GET")).body)
    assert "post" in document["paths"]["/predict"]
    assert "post" in document["paths"]["/v2/models/{model_name}/versions/{model_version}/infer"]
