"""The API in-process (TestClient, lifespan included) with a real model from the training job."""

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.digits import encode
from training.data import RawSplit


@pytest.fixture(scope="module")
def client(trained_model_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=trained_model_path, device="cpu", batch_max_delay_ms=0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def reference(trained_model_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(trained_model_path), providers=["CPUExecutionProvider"])


def run_reference(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    batch = (images.astype(np.float32) / 255)[..., np.newaxis]
    return np.asarray(session.run(["probabilities"], {"image": batch})[0])


def predictions(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"predictions", "model", "model_version"}
    assert body["model_version"] == "1"  # one model file: version 1
    return list(body["predictions"])


def test_one_json_image_as_floats_matches_onnxruntime(
    mnist_test_digits: RawSplit, client: TestClient, reference: ort.InferenceSession
) -> None:
    image = mnist_test_digits.images[0]
    [prediction] = predictions(client.post("/predict", json={"image": (image / 255).tolist()}))
    expected = run_reference(reference, image[np.newaxis])[0]
    assert prediction["digit"] == int(expected.argmax()) == mnist_test_digits.labels[0]
    np.testing.assert_allclose(prediction["probabilities"], expected, atol=1e-6)
    assert prediction["confidence"] == pytest.approx(expected.max(), abs=1e-6)
    assert sum(prediction["probabilities"]) == pytest.approx(1, abs=1e-4)


def test_integers_0_255_flat_and_nested_give_the_same_answer(
    mnist_test_digits: RawSplit, client: TestClient
) -> None:
    image = mnist_test_digits.images[1]
    floats = predictions(client.post("/predict", json={"image": (image / 255).tolist()}))
    nested = predictions(client.post("/predict", json={"image": image.tolist()}))
    flat = predictions(client.post("/predict", json={"image": image.reshape(-1).tolist()}))
    assert floats[0]["digit"] == nested[0]["digit"] == flat[0]["digit"]
    np.testing.assert_allclose(floats[0]["probabilities"], flat[0]["probabilities"], atol=1e-6)


def test_a_batch_is_answered_in_order(
    mnist_test_digits: RawSplit, client: TestClient, reference: ort.InferenceSession
) -> None:
    batch = mnist_test_digits.images[:20]
    answer = predictions(client.post("/predict", json={"images": batch.tolist()}))
    expected = run_reference(reference, batch)
    assert [p["digit"] for p in answer] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([p["probabilities"] for p in answer], expected, atol=1e-6)


def test_the_model_id_comes_from_the_model_card(client: TestClient) -> None:
    card = client.get("/summary").json()["model_card"]
    body = client.post("/predict", json={"image": [0.0] * 784}).json()
    assert body["model"] == card["id"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_image_files_as_multipart(
    mnist_test_digits: RawSplit, client: TestClient, fmt: str
) -> None:
    files = [
        ("file", (f"digit{i}.{fmt.lower()}", encode(mnist_test_digits.images[i], fmt)))
        for i in range(4)
    ]
    answer = predictions(client.post("/predict", files=files))
    assert [p["digit"] for p in answer] == mnist_test_digits.labels[:4].tolist()


def test_an_image_file_as_the_raw_body(mnist_test_digits: RawSplit, client: TestClient) -> None:
    response = client.post(
        "/predict",
        content=encode(mnist_test_digits.images[2]),
        headers={"content-type": "image/png"},
    )
    assert predictions(response)[0]["digit"] == mnist_test_digits.labels[2]


def test_a_raw_uint8_tensor(
    mnist_test_digits: RawSplit, client: TestClient, reference: ort.InferenceSession
) -> None:
    batch = mnist_test_digits.images[:256]
    response = client.post(
        "/predict?dtype=uint8&shape=256,28,28",
        content=batch.tobytes(),
        headers={"content-type": "application/octet-stream"},
    )
    answer = predictions(response)
    assert [p["digit"] for p in answer] == run_reference(reference, batch).argmax(1).tolist()


def test_a_npy_file(mnist_test_digits: RawSplit, client: TestClient) -> None:
    buffer = io.BytesIO()
    np.save(buffer, (mnist_test_digits.images[:8] / 255).astype(np.float32))
    response = client.post(
        "/predict", content=buffer.getvalue(), headers={"content-type": "application/x-npy"}
    )
    assert [p["digit"] for p in predictions(response)] == mnist_test_digits.labels[:8].tolist()


def test_summary_has_the_reference_layer_table(client: TestClient) -> None:
    body = client.get("/summary").json()
    shapes = [layer["output_shape"] for layer in body["summary"]["layers"]]
    params = [layer["params"] for layer in body["summary"]["layers"]]
    assert shapes == [
        [None, 26, 26, 32],
        [None, 13, 13, 32],
        [None, 11, 11, 64],
        [None, 5, 5, 64],
        [None, 3, 3, 64],
        [None, 576],
        [None, 64],
        [None, 10],
    ]
    assert params == [320, 0, 18496, 0, 36928, 0, 36928, 650]
    assert body["summary"]["total_params"] == 93322
    assert body["inputs"] == [{"name": "image", "datatype": "float32", "shape": [None, 28, 28, 1]}]
    assert body["outputs"] == [
        {"name": "probabilities", "datatype": "float32", "shape": [None, 10]}
    ]
    assert body["providers"] == ["CPUExecutionProvider"]
    assert body["model_card"]["epochs"] >= 1


def test_summary_as_text_reads_like_keras(client: TestClient) -> None:
    for response in (
        client.get("/summary?format=text"),
        client.get("/summary", headers={"accept": "text/plain"}),
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "(None, 26, 26, 32)" in response.text
        assert "Total params: 93,322" in response.text


def test_health(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    assert client.get("/health/ready").json() == {"status": "ready"}


def test_metrics_count_requests_and_batches(client: TestClient) -> None:
    client.post("/predict", json={"image": [0.0] * 784})
    text = client.get("/metrics").text
    assert 'mnist_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert "mnist_batch_size_bucket" in text
    assert "mnist_inference_seconds_count" in text
    assert 'mnist_model_info{id="' in text


def test_openapi_documents_every_body_kind_with_examples(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    content = body["content"]
    for kind in ("application/json", "multipart/form-data", "image/png", "application/x-npy"):
        assert kind in content
    assert content["application/json"]["examples"]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_pages_load_scripts_of_one_release_pinned_by_hash(
    client: TestClient, path: str
) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="(https://[^"]+)"\s+integrity="(sha384-[^"]+)"', page.text)
    # Every script and stylesheet from elsewhere names an exact version and its hash.
    assert len(assets) == len(re.findall(r'(?:src|href)="https://', page.text)) >= 1
    assert all(re.search(r"@\d+\.\d+\.\d+/", url) for url, _ in assets)
