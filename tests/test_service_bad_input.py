"""Every kind of bad input gets a 4xx with a JSON body that says what is wrong: never a 500."""

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.digits import drawn_one


@pytest.fixture(scope="module")
def client(trained_model_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_path=trained_model_path,
        device="cpu",
        max_body_bytes=2_000_000,
        max_images_per_request=16,
        max_image_pixels=4_000_000,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def png(size: tuple[int, int], mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


JSON = {"content-type": "application/json"}
BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("invalid JSON", {"content": b"{not json", "headers": JSON}, 400, "not valid JSON"),
    ("NaN literal", {"content": b'{"image": [NaN]}', "headers": JSON}, 400, "not valid JSON"),
    ("JSON array", {"json": [1, 2, 3]}, 422, "exactly one key"),
    ("no image key", {"json": {"picture": [0] * 784}}, 422, "exactly one key"),
    ("both keys", {"json": {"image": [0] * 784, "images": []}}, 422, "exactly one key"),
    ("wrong shape", {"json": {"image": [[0.0] * 27] * 28}}, 422, "28"),
    ("ragged rows", {"json": {"image": [[0.0] * 28] * 27 + [[0.0] * 5]}}, 422, "lengths"),
    ("strings", {"json": {"image": ["a"] * 784}}, 422, "string"),
    ("nulls", {"json": {"image": [None] * 784}}, 422, "null"),
    ("float above 1", {"json": {"image": [1.5] + [0.0] * 783}}, 422, "[0, 1]"),
    ("negative", {"json": {"image": [-1] + [0] * 783}}, 422, "0"),
    ("integer above 255", {"json": {"image": [256] + [0] * 783}}, 422, "255"),
    ("empty batch", {"json": {"images": []}}, 422, "empty"),
    ("too many images", {"json": {"images": [[0] * 784] * 17}}, 413, "16"),
    ("no content type", {"content": b"abc"}, 415, "content type"),
    ("text/plain", {"content": b"7", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    (
        "not an image",
        {"content": b"hello, this is text", "headers": {"content-type": "image/png"}},
        415,
        "image",
    ),
    ("empty image body", {"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
    (
        "truncated PNG",
        {"content": drawn_one()[:60], "headers": {"content-type": "image/png"}},
        400,
        "truncated",
    ),
    (
        "decompression bomb",
        {"content": png((4000, 4000), "1"), "headers": {"content-type": "image/png"}},
        413,
        "pixels",
    ),
    (
        "blank image",
        {"content": png((50, 50)), "headers": {"content-type": "image/png"}},
        422,
        "blank",
    ),
    ("multipart without file", {"data": {"name": "x"}, "files": {"other": b"x"}}, 422, "'file'"),
    ("too many files", {"files": [("file", ("d.png", drawn_one()))] * 17}, 413, "16"),
    (
        "tensor without shape",
        {"content": b"\0" * 784, "headers": {"content-type": "application/octet-stream"}},
        400,
        "shape",
    ),
    ("body over the limit", {"content": b"0" * 2_000_001, "headers": JSON}, 413, "limit"),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "says"),
    [pytest.param(kwargs, status, says, id=name) for name, kwargs, status, says in BAD_REQUESTS],
)
def test_bad_input_gets_a_clear_4xx(
    client: TestClient, request_kwargs: dict[str, Any], status: int, says: str
) -> None:
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert says.lower() in detail.lower(), detail


def test_raw_tensors_with_wrong_descriptions(client: TestClient) -> None:
    octet = {"content-type": "application/octet-stream"}
    cases = [
        ("/predict?dtype=uint8&shape=2,28,28", b"\0" * 784, 400),  # bytes for one, not two
        ("/predict?dtype=int64&shape=1,28,28", b"\0" * 784 * 8, 422),
        ("/predict?dtype=uint8&shape=1,x,28", b"\0" * 784, 400),
        ("/predict?dtype=uint8&shape=1,27,29", b"\0" * 783, 422),
    ]
    for url, body, status in cases:
        response = client.post(url, content=body, headers=octet)
        assert response.status_code == status, (url, response.text)
        assert response.json()["detail"]


def test_a_dtype_or_shape_out_of_its_schema_is_refused_whatever_the_body(
    client: TestClient,
) -> None:
    one = {"image": [0] * 783 + [255]}
    for query, status, says in [
        ("dtype=AAA", 422, "dtype 'AAA' is not one of uint8, float32"),
        ("shape=-1,28,28", 400, "comma-separated list of integers"),
        ("shape=1, 28,28", 400, "comma-separated list of integers"),
    ]:
        response = client.post(f"/predict?{query}", json=one)
        assert response.status_code == status, (query, response.text)
        assert says in response.json()["detail"]
    assert client.post("/predict?dtype=uint8&shape=1,28,28", json=one).status_code == 200


def test_a_pickled_npy_is_refused(client: TestClient) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    response = client.post(
        "/predict", content=buffer.getvalue(), headers={"content-type": "application/x-npy"}
    )
    assert 400 <= response.status_code < 500
    assert response.json()["detail"]


def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    assert client.get("/nope").status_code == 404
    response = client.get("/predict")
    assert response.status_code == 405
    assert response.json()["detail"]
