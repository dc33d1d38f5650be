"""The Open Inference Protocol over gRPC, against the real server, with Triton's client."""

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc  # type: ignore[import-untyped]
import tritonclient.http as triton_http  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from tests.server import free_port, running_server, server_process
from training.data import RawSplit

pytestmark = pytest.mark.e2e

MAX_IMAGES = 128
KEY = "grpc-test-key"


@contextmanager
def serving_grpc(model: Path, **env: str) -> Iterator[tuple[str, str]]:
    """One worker with gRPC on a free port: its REST base URL and gRPC host:port."""
    grpc_port = free_port()
    with running_server(model, MNIST_WORKERS="1", MNIST_GRPC_PORT=str(grpc_port), **env) as url:
        yield url, f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def ports(trained_model_path: Path) -> Iterator[tuple[str, str]]:
    with serving_grpc(trained_model_path, MNIST_MAX_IMAGES_PER_REQUEST=str(MAX_IMAGES)) as ports:
        yield ports


@pytest.fixture(scope="module")
def client(ports: tuple[str, str]) -> Iterator[Any]:
    triton_client = triton_grpc.InferenceServerClient(ports[1])
    try:
        yield triton_client
    finally:
        triton_client.close()


@pytest.fixture(scope="module")
def stub(ports: tuple[str, str]) -> Iterator[Any]:
    """The bare generated stub, for what tritonclient never sends (typed contents)."""
    with grpc.insecure_channel(ports[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def digits(mnist_test_digits: RawSplit) -> np.ndarray:
    """64 real test digits, uint8 (64, 28, 28, 1)."""
    return mnist_test_digits.images[:64, :, :, np.newaxis]


@pytest.fixture(scope="module")
def rest_probabilities(ports: tuple[str, str], digits: np.ndarray) -> np.ndarray:
    """What REST's v2 infer answers for the same digits."""
    with triton_http.InferenceServerClient(ports[0].removeprefix("http://")) as rest:
        tensor = triton_http.InferInput("image", list(digits.shape), "UINT8")
        tensor.set_data_from_numpy(digits)
        return np.asarray(rest.infer("mnist", [tensor]).as_numpy("probabilities"))


def infer_input(images: np.ndarray, shape: list[int] | None = None) -> Any:
    datatype = "UINT8" if images.dtype == np.uint8 else "FP32"
    tensor = triton_grpc.InferInput("image", shape or list(images.shape), datatype)
    tensor.set_data_from_numpy(images if shape is None else images.reshape(shape))
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


def test_metadata_and_config(client: Any) -> None:
    metadata = client.get_model_metadata("mnist", as_json=True)
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": ["-1", "28", "28", "1"]}
    ]
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]}
    ]
    config = client.get_model_config("mnist", as_json=True)["config"]
    assert int(config["max_batch_size"]) == MAX_IMAGES
    assert client.get_server_metadata(as_json=True)["name"] == "mnist-serving"


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
@pytest.mark.parametrize("version", ["", "1"])
def test_a_batch_gives_what_rest_gives(
    client: Any,
    digits: np.ndarray,
    rest_probabilities: np.ndarray,
    mnist_test_digits: RawSplit,
    datatype: str,
    version: str,
) -> None:
    images = digits if datatype == "UINT8" else (digits / np.float32(255)).astype(np.float32)
    result = client.infer("mnist", [infer_input(images)], model_version=version, request_id="b1")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (64, 10)
    np.testing.assert_allclose(probabilities, rest_probabilities, atol=1e-5)
    # A model that reads digits, not noise (the session model is trained briefly).
    assert (probabilities.argmax(1) == mnist_test_digits.labels[:64]).mean() > 0.8
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("mnist", "1", "b1")


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_typed_contents_give_what_raw_bytes_give(
    stub: Any, digits: np.ndarray, rest_probabilities: np.ndarray, datatype: str
) -> None:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="image", datatype=datatype, shape=[8, 28, 28, 1]
    )
    if datatype == "UINT8":
        tensor.contents.uint_contents.extend(digits[:8].reshape(-1).tolist())
    else:
        tensor.contents.fp32_contents.extend((digits[:8].reshape(-1) / 255).tolist())
    response = stub.ModelInfer(service_pb2.ModelInferRequest(model_name="mnist", inputs=[tensor]))
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "FP32", [8, 10])
    probabilities = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(8, 10)
    np.testing.assert_allclose(probabilities, rest_probabilities[:8], atol=1e-5)


def test_typed_grey_levels_over_255_are_refused(stub: Any) -> None:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="image", datatype="UINT8", shape=[1, 28, 28, 1]
    )
    tensor.contents.uint_contents.extend([256] * 784)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(service_pb2.ModelInferRequest(model_name="mnist", inputs=[tensor]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside the grey levels 0-255" in caught.value.details()


@pytest.mark.parametrize(
    ("images", "shape", "phrase"),
    [
        (np.zeros((2, 28, 28), np.uint8), None, "it must be [N, 28, 28, 1]"),
        (np.zeros((1, 784), np.uint8), None, "it must be [N, 28, 28, 1]"),
        (np.full((1, 28, 28, 1), 2, np.float32), None, "outside [0, 1]"),
        (np.zeros((MAX_IMAGES + 1, 28, 28, 1), np.uint8), None, "MNIST_MAX_IMAGES_PER_REQUEST"),
        (np.zeros((2, 28, 28, 1), np.uint8), [1, 28, 28, 1], "takes 784"),
    ],
    ids=["no-channel", "flat", "fp32-over-1", "too-many", "bytes-for-2-shape-for-1"],
)
def test_bad_inputs_are_invalid_arguments(
    client: Any, images: np.ndarray, shape: list[int] | None, phrase: str
) -> None:
    tensor = triton_grpc.InferInput("image", shape or list(images.shape), "UINT8")
    if images.dtype == np.float32:
        tensor = triton_grpc.InferInput("image", list(images.shape), "FP32")
    # set_data_from_numpy refuses a shape that does not match: set the raw bytes directly.
    tensor._raw_content = images.tobytes()
    error = raised(client.infer, "mnist", [tensor])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert phrase in error.message()


def test_an_unknown_output_is_an_invalid_argument(client: Any, digits: np.ndarray) -> None:
    outputs = [triton_grpc.InferRequestedOutput("logits")]
    error = raised(client.infer, "mnist", [infer_input(digits[:1])], outputs=outputs)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unknown output 'logits'" in error.message()


@pytest.mark.parametrize(
    ("model", "version", "phrase"),
    [("resnet50", "", "unknown model 'resnet50'"), ("mnist", "2", "has no ready version 2")],
)
def test_unknown_models_and_versions_are_not_found(
    client: Any, digits: np.ndarray, model: str, version: str, phrase: str
) -> None:
    for error in (
        raised(client.infer, model, [infer_input(digits[:1])], model_version=version),
        raised(client.get_model_metadata, model, version),
        raised(client.get_model_config, model, version),
    ):
        assert error.status() == "StatusCode.NOT_FOUND"
        assert phrase in error.message()


def test_with_keys_set_a_call_takes_one(trained_model_path: Path, digits: np.ndarray) -> None:
    with (
        serving_grpc(trained_model_path, MNIST_API_KEYS=KEY) as (_, target),
        triton_grpc.InferenceServerClient(target) as client,
    ):
        # Open, like REST's /v2/health/.
        assert client.is_server_live()
        assert client.is_server_ready()
        missing = raised(client.infer, "mnist", [infer_input(digits[:1])])
        assert missing.status() == "StatusCode.UNAUTHENTICATED"
        assert "authorization: Bearer KEY" in missing.message()
        wrong = raised(
            client.get_model_metadata, "mnist", headers={"authorization": "Bearer not-the-key"}
        )
        assert wrong.status() == "StatusCode.UNAUTHENTICATED"
        assert "not valid" in wrong.message()
        for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            result = client.infer("mnist", [infer_input(digits[:2])], headers=headers)
            assert result.as_numpy("probabilities").shape == (2, 10)


def _listening_sockets(port: int) -> int:
    # gRPC listens on 127.0.0.1 through an IPv6 socket (::ffff:127.0.0.1): read both tables.
    lines = [
        line
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for line in Path(table).read_text().splitlines()[1:]
    ]
    # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN.
    return sum(
        1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
    )


def test_two_workers_both_serve_grpc(trained_model_path: Path, digits: np.ndarray) -> None:
    grpc_port = free_port()
    with server_process(
        trained_model_path, MNIST_WORKERS="2", MNIST_GRPC_PORT=str(grpc_port)
    ) as server:
        # Both workers bound the one port (SO_REUSEPORT): two listening sockets on it. The
        # second may still be starting when the first answers ready.
        deadline = time.monotonic() + 30
        while _listening_sockets(grpc_port) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _listening_sockets(grpc_port) == 2
        for _ in range(8):  # fresh connections, which the kernel spreads over both
            with triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                result = client.infer("mnist", [infer_input(digits[:1])])
                assert result.as_numpy("probabilities").shape == (1, 10)
        started = [line for line in server.output if "gRPC (Open Inference Protocol)" in line]
        assert len(started) == 2, server.output


def one_digit_request(digits: np.ndarray) -> Any:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="image", datatype="UINT8", shape=[1, 28, 28, 1]
    )
    return service_pb2.ModelInferRequest(
        model_name="mnist", inputs=[tensor], raw_input_contents=[digits[:1].tobytes()]
    )


def test_rest_and_grpc_share_one_inflight_limit(
    trained_model_path: Path, digits: np.ndarray
) -> None:
    with (
        serving_grpc(trained_model_path, MNIST_MAX_INFLIGHT_REQUESTS="1") as (url, target),
        grpc.insecure_channel(target) as channel,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = one_digit_request(digits)
        host, port = url.removeprefix("http://").split(":")
        # A REST request whose body never comes holds the worker's one place.
        with socket.create_connection((host, int(port))) as held:
            held.sendall(
                b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n"
            )
            refused = None
            for _ in range(50):
                try:
                    stub.ModelInfer(request, timeout=5)
                except grpc.RpcError as error:
                    refused = error
                    break
                time.sleep(0.05)
            assert refused is not None, "gRPC was served beside a REST request at the limit"
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            assert "MNIST_MAX_INFLIGHT_REQUESTS" in refused.details()
            assert ("retry-after", "1") in refused.trailing_metadata()
        # Once the REST request is gone, its place is gRPC's.
        answer, codes = None, set()
        for _ in range(50):
            try:
                answer = stub.ModelInfer(request, timeout=5)
                break
            except grpc.RpcError as error:
                codes.add(error.code())
                time.sleep(0.05)
        assert answer is not None, f"the place the REST request held was never freed: {codes}"
        assert codes <= {grpc.StatusCode.UNAVAILABLE}
        assert answer.outputs[0].shape == [1, 10]
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'mnist_rejected_requests_total{reason="inflight_limit"}' in metrics
