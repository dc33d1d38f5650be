"""The Open Inference Protocol over real HTTP, spoken by Triton's own client, tritonclient."""

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton  # type: ignore[import-untyped]
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from tests.server import running_server
from training.data import RawSplit

pytestmark = pytest.mark.e2e

# Below the default so that the config visibly comes from the settings.
MAX_IMAGES = 128


@pytest.fixture(scope="module")
def base_url(trained_model_path: Path) -> Iterator[str]:
    with running_server(trained_model_path, MNIST_MAX_IMAGES_PER_REQUEST=str(MAX_IMAGES)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[Any]:
    # tritonclient takes host:port, without the scheme.
    triton_client = triton.InferenceServerClient(base_url.removeprefix("http://"))
    try:
        yield triton_client
    finally:
        triton_client.close()


@pytest.fixture(scope="module")
def digits(mnist_test_digits: RawSplit) -> np.ndarray:
    """64 real test digits, uint8 (64, 28, 28, 1)."""
    return mnist_test_digits.images[:64, :, :, np.newaxis]


@pytest.fixture(scope="module")
def predict_probabilities(base_url: str, digits: np.ndarray) -> np.ndarray:
    """What POST /predict answers for the same digits, sent as 0-255 JSON arrays."""
    response = httpx.post(
        f"{base_url}/predict", json={"images": digits[..., 0].tolist()}, timeout=30
    )
    assert response.status_code == 200, response.text
    return np.asarray([p["probabilities"] for p in response.json()["predictions"]], np.float32)


def infer_input(images: np.ndarray, binary: bool) -> Any:
    datatype = "UINT8" if images.dtype == np.uint8 else "FP32"
    tensor = triton.InferInput("image", list(images.shape), datatype)
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


def raised(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value


def test_liveness_and_readiness(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mnist")
    assert client.is_model_ready("mnist", "1")
    assert not client.is_model_ready("mnist", "2")
    assert not client.is_model_ready("resnet50")


def test_server_metadata_lists_the_binary_tensor_extension(client: Any) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "mnist-serving"
    assert metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]


@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata_is_the_onnx_signature(client: Any, version: str) -> None:
    metadata = client.get_model_metadata("mnist", version)
    assert metadata["name"] == "mnist"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]


def test_model_config_gives_perf_analyzer_its_batch_limit(client: Any, base_url: str) -> None:
    config = client.get_model_config("mnist")
    assert config["max_batch_size"] == MAX_IMAGES
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [28, 28, 1]}]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]
    card_id = httpx.get(f"{base_url}/summary", timeout=10).json()["model_card"]["id"]
    assert config["parameters"]["model_id"]["string_value"] == card_id


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_a_batch_of_64_gives_what_predict_gives(
    client: Any,
    digits: np.ndarray,
    predict_probabilities: np.ndarray,
    mnist_test_digits: RawSplit,
    datatype: str,
    binary: bool,
) -> None:
    images = digits if datatype == "UINT8" else (digits / np.float32(255)).astype(np.float32)
    request_id = f"batch-{datatype}-{binary}"
    result = client.infer("mnist", [infer_input(images, binary)], request_id=request_id)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (64, 10)
    # Batches of different make-up may round differently in the last bits.
    np.testing.assert_allclose(probabilities, predict_probabilities, atol=1e-5)
    assert (probabilities.argmax(1) == predict_probabilities.argmax(1)).all()
    assert (probabilities.argmax(1) == mnist_test_digits.labels[:64]).mean() > 0.9
    response = result.get_response()
    assert response["id"] == request_id
    assert (response["model_name"], response["model_version"]) == ("mnist", "1")
    # tritonclient asks for binary outputs when it names none: the extension at work.
    assert response["outputs"][0]["parameters"] == {"binary_data_size": 64 * 10 * 4}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_requested_outputs_come_back_in_the_form_asked(
    client: Any, digits: np.ndarray, predict_probabilities: np.ndarray, binary: bool
) -> None:
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(
        "mnist", [infer_input(digits[:5], True)], outputs=outputs, model_version="1"
    )
    [output] = result.get_response()["outputs"]
    assert ("data" in output) == (not binary)
    assert ("parameters" in output) == binary
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), predict_probabilities[:5], atol=1e-5
    )


def test_an_unknown_output_is_a_400(client: Any, digits: np.ndarray) -> None:
    error = raised(
        client.infer,
        "mnist",
        [infer_input(digits[:1], True)],
        outputs=[triton.InferRequestedOutput("logits")],
    )
    assert error.status() == "400"
    assert "unknown output 'logits'" in error.message()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(
    client: Any, digits: np.ndarray, predict_probabilities: np.ndarray, algorithm: str
) -> None:
    result = client.infer(
        "mnist", [infer_input(digits[:8], True)], request_compression_algorithm=algorithm
    )
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), predict_probabilities[:8], atol=1e-5
    )


def test_concurrent_clients_each_get_their_own_answer(
    base_url: str, digits: np.ndarray, predict_probabilities: np.ndarray
) -> None:
    host = base_url.removeprefix("http://")

    def ask(index: int) -> np.ndarray:
        # One client per thread: a tritonclient connection pool is not shared across threads.
        with triton.InferenceServerClient(host) as own:
            result = own.infer("mnist", [infer_input(digits[index : index + 1], True)])
            return np.asarray(result.as_numpy("probabilities")[0])

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = np.stack(list(pool.map(ask, range(64))))
    np.testing.assert_allclose(answers, predict_probabilities, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "version", "status", "phrase"),
    [
        ("resnet50", "", "404", "unknown model 'resnet50'"),
        ("mnist", "2", "404", "has no ready version 2"),
    ],
)
def test_tritonclient_sees_unknown_models_and_versions_as_404(
    client: Any, digits: np.ndarray, model: str, version: str, status: str, phrase: str
) -> None:
    for error in (
        raised(client.infer, model, [infer_input(digits[:1], True)], model_version=version),
        raised(client.get_model_metadata, model, version),
        raised(client.get_model_config, model, version),
    ):
        assert error.status() == status
        assert phrase in error.message()


def test_tritonclient_sees_wrong_datatype_and_shape_as_400(client: Any, digits: np.ndarray) -> None:
    as_int32 = digits[:2].astype(np.int32)
    wrong_type = triton.InferInput("image", [2, 28, 28, 1], "INT32")
    wrong_type.set_data_from_numpy(as_int32)
    error = raised(client.infer, "mnist", [wrong_type])
    assert error.status() == "400"
    assert "datatype 'INT32'" in error.message()
    error = raised(client.infer, "mnist", [infer_input(digits[:2, :, :, 0], True)])
    assert error.status() == "400"
    assert "[N, 28, 28, 1]" in error.message()


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["request_id"] == response.headers["x-request-id"]
    return str(body["error"])


def test_raw_http_errors_use_the_protocol_form(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        infer = "/v2/models/mnist/infer"
        assert "not valid JSON" in error_of(http.post(infer, content=b'{"inputs": ['), 400)
        assert "unknown model" in error_of(http.get("/v2/models/other"), 404)
        assert "no ready version 9" in error_of(http.get("/v2/models/mnist/versions/9/ready"), 404)
        too_many = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [MAX_IMAGES + 1, 28, 28, 1],
                    "data": [0] * ((MAX_IMAGES + 1) * 784),
                }
            ]
        }
        assert "MNIST_MAX_IMAGES_PER_REQUEST" in error_of(http.post(infer, json=too_many), 413)
        assert "use POST" in error_of(http.get(infer), 405)
        assert "no endpoint" in error_of(http.get("/v2/repository/index"), 404)
        # The service's own routes keep their {"detail": ...} form.
        response = http.post("/predict", content=b"{", headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert set(response.json()) == {"detail"}


def test_binary_request_by_hand_follows_the_extension_spec(
    base_url: str, digits: np.ndarray, predict_probabilities: np.ndarray
) -> None:
    header = (
        b'{"id":"raw","inputs":[{"name":"image","shape":[2,28,28,1],"datatype":"UINT8",'
        b'"parameters":{"binary_data_size":1568}}],'
        b'"outputs":[{"name":"probabilities","parameters":{"binary_data":true}}]}'
    )
    response = httpx.post(
        f"{base_url}/v2/models/mnist/infer",
        content=header + digits[:2].tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    body = response.content
    assert len(body) == length + 2 * 10 * 4
    header_out = json.loads(body[:length])
    assert header_out["id"] == "raw"
    assert header_out["outputs"][0]["parameters"] == {"binary_data_size": 80}
    probabilities = np.frombuffer(body[length:], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(probabilities, predict_probabilities[:2], atol=1e-5)
