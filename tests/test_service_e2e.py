"""The real thing: `python -m service` under uvicorn on 127.0.0.1, real files over real HTTP."""

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.digits import encode
from tests.metrics_text import key, samples
from tests.server import REPO_ROOT, free_port, running_server, start_server
from training.data import RawSplit

ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def base_url(trained_model_path: Path) -> Iterator[str]:
    with running_server(trained_model_path) as url:
        yield url


def test_real_png_and_jpeg_uploads(base_url: str, mnist_test_digits: RawSplit) -> None:
    for index, fmt in [(0, "PNG"), (1, "JPEG")]:
        digit = mnist_test_digits.images[index]
        files = {"file": (f"digit.{fmt.lower()}", encode(digit, fmt), f"image/{fmt.lower()}")}
        response = httpx.post(f"{base_url}/predict", files=files, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["digit"] == mnist_test_digits.labels[index]


def test_concurrent_requests_each_get_their_own_answer(
    base_url: str, mnist_test_digits: RawSplit
) -> None:
    def ask(index: int) -> int:
        image = mnist_test_digits.images[index].tolist()
        response = httpx.post(f"{base_url}/predict", json={"image": image}, timeout=10)
        return int(response.json()["predictions"][0]["digit"])

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, range(200)))
    with httpx.Client() as client:
        one_by_one = [
            client.post(
                f"{base_url}/predict", json={"image": mnist_test_digits.images[i].tolist()}
            ).json()["predictions"][0]["digit"]
            for i in range(200)
        ]
    assert answers == one_by_one


def test_accuracy_on_the_10000_test_digits_via_arrays_and_png(
    base_url: str, mnist_test_digits: RawSplit, trained_model_path: Path
) -> None:
    images, labels = mnist_test_digits.images, mnist_test_digits.labels
    session = ort.InferenceSession(str(trained_model_path), providers=["CPUExecutionProvider"])
    batch = (images / 255).astype(np.float32)[..., np.newaxis]
    in_process = np.asarray(session.run(["probabilities"], {"image": batch})[0])
    via_arrays, via_png = [], []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for chunk in np.array_split(np.arange(len(images)), 40):
            response = client.post("/predict", json={"images": images[chunk].tolist()})
            assert response.status_code == 200, response.text
            via_arrays += [p["probabilities"] for p in response.json()["predictions"]]
            files = [("file", (f"{i}.png", encode(images[i]), "image/png")) for i in chunk]
            response = client.post("/predict", files=files)
            assert response.status_code == 200, response.text
            via_png += [p["digit"] for p in response.json()["predictions"]]
    arrays = np.asarray(via_arrays)
    np.testing.assert_allclose(arrays, in_process, atol=1e-5)
    accuracy = {
        "onnxruntime_in_process": float((in_process.argmax(1) == labels).mean()),
        "arrays": float((arrays.argmax(1) == labels).mean()),
        "png_uploads": float((np.asarray(via_png) == labels).mean()),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "service_accuracy.json").write_text(json.dumps(accuracy, indent=2))
    assert accuracy["arrays"] == accuracy["onnxruntime_in_process"]
    assert accuracy["png_uploads"] >= 0.95 * accuracy["arrays"], accuracy


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_a_bad_model_file_stops_start_up_with_a_clear_message(tmp_path: Path, problem: str) -> None:
    model = tmp_path / "mnist.onnx"
    if problem == "corrupt":
        model.write_bytes(b"this is not an onnx file")
    server = start_server(model, free_port())
    try:
        output, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode != 0
    reason = "no such file" if problem == "missing" else "not a valid ONNX model"
    [line] = [line for line in output.splitlines() if f"cannot load model {model}" in line]
    assert reason in line


def test_a_lone_request_runs_at_once_without_waiting_in_the_queue(
    trained_model_path: Path, mnist_test_digits: RawSplit
) -> None:
    """One request at a time: each is the only one in progress, so it skips the queue (its
    wait is exactly 0, where a queued job's is the time until the batcher took it)."""
    with running_server(trained_model_path, MNIST_WORKERS="1") as url, httpx.Client() as client:
        for index in range(5):
            image = mnist_test_digits.images[index].tolist()
            answer = client.post(f"{url}/predict", json={"image": image}, timeout=10).json()
            assert answer["predictions"][0]["digit"] == mnist_test_digits.labels[index]
        seen = samples(client.get(f"{url}/metrics", timeout=10).text)
    assert seen[key("mnist_queue_wait_seconds_count", version="1")] == 5
    assert seen[key("mnist_queue_wait_seconds_sum", version="1")] == 0
