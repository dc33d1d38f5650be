"""The CUDA execution provider, on a machine with a GPU and onnxruntime-gpu: `pytest -m gpu`."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.models.session import CPU, CUDA, ModelSession
from service.settings import Settings
from tests.digits import encode
from training.data import RawSplit

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def client(trained_model_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=trained_model_path, device="cuda"))) as client:
        yield client


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_cuda_is_used_when_asked_or_available(trained_model_path: Path, device: str) -> None:
    session = ModelSession(trained_model_path, device)  # type: ignore[arg-type]
    assert session.providers[0] == CUDA
    assert not session.on_cpu  # so no batch runs on the event loop


def test_cuda_agrees_with_the_cpu(trained_model_path: Path, mnist_test_digits: RawSplit) -> None:
    images = (mnist_test_digits.images[:2000] / 255).astype(np.float32)[..., np.newaxis]
    on_gpu = ModelSession(trained_model_path, "cuda").predict(images)
    on_cpu = ModelSession(trained_model_path, "cpu").predict(images)
    # cuDNN computes convolutions in TF32 on Ampere and later (onnxruntime's default):
    # probabilities move by up to ~1e-3, answers almost never.
    np.testing.assert_allclose(on_gpu, on_cpu, atol=3e-3)
    assert (on_gpu.argmax(1) == on_cpu.argmax(1)).mean() > 0.999


def test_the_service_reports_and_uses_cuda(client: TestClient, mnist_test_digits: RawSplit) -> None:
    assert client.get("/summary").json()["providers"][:2] == [CUDA, CPU]
    files = [("file", (f"{i}.png", encode(mnist_test_digits.images[i]))) for i in range(32)]
    response = client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    digits = [p["digit"] for p in response.json()["predictions"]]
    assert np.mean(np.asarray(digits) == mnist_test_digits.labels[:32]) > 0.9
