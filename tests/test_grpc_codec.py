"""gRPC's decoding of a ModelInferRequest, without a server: the same checks as REST's."""

from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
import pytest
from tritonclient.grpc import service_pb2  # type: ignore[import-untyped]

from service.batcher import QueueFullError
from service.errors import InputError
from service.inference_protocol.grpc_server import (
    decode_images,
    grpc_code,
    listen_address,
    requested_outputs,
)

Tensor = service_pb2.ModelInferRequest.InferInputTensor


def request(datatype: str, shape: list[int], raw: bytes | None = None) -> Any:
    tensor = Tensor(name="image", datatype=datatype, shape=shape)
    message = service_pb2.ModelInferRequest(model_name="mnist", inputs=[tensor])
    if raw is not None:
        message.raw_input_contents.append(raw)
    return message


def refused(message: Any, max_images: int = 8) -> InputError:
    with pytest.raises(InputError) as caught:
        decode_images(message, max_images)
    return caught.value


def test_raw_uint8_is_scaled_to_the_unit_interval() -> None:
    pixels = np.arange(2 * 784, dtype=np.uint32) % 256
    images = decode_images(request("UINT8", [2, 28, 28, 1], pixels.astype(np.uint8).tobytes()), 8)
    assert images.dtype == np.float32
    assert images.shape == (2, 28, 28, 1)
    np.testing.assert_allclose(images.reshape(-1), pixels / 255, atol=1e-7)


def test_typed_fp32_contents_equal_raw_bytes() -> None:
    values = np.linspace(0, 1, 784, dtype=np.float32)
    typed = request("FP32", [1, 28, 28, 1])
    typed.inputs[0].contents.fp32_contents.extend(values.tolist())
    raw = request("FP32", [1, 28, 28, 1], values.tobytes())
    np.testing.assert_array_equal(decode_images(typed, 8), decode_images(raw, 8))


@pytest.mark.parametrize(
    ("message", "phrase"),
    [
        (request("UINT8", [1, 28, 28], bytes(784)), "it must be [N, 28, 28, 1]"),
        (request("INT64", [1, 28, 28, 1], bytes(784 * 8)), "datatype 'INT64'"),
        (request("UINT8", [9, 28, 28, 1], bytes(9 * 784)), "limit of 8"),
        (request("UINT8", [1, 28, 28, 1], bytes(783)), "raw_input_contents has 783 bytes"),
        (request("UINT8", [1, 28, 28, 1]), "has no data"),
        (request("FP32", [1, 28, 28, 1], np.full(784, 2, "<f4").tobytes()), "outside [0, 1]"),
        (request("FP32", [1, 28, 28, 1], np.full(784, np.nan, "<f4").tobytes()), "NaN"),
    ],
    ids=["shape", "datatype", "too-many", "short-bytes", "no-data", "fp32-range", "nan"],
)
def test_bad_tensors_are_refused_with_the_reason(message: Any, phrase: str) -> None:
    error = refused(message)
    assert error.status in (400, 413)
    assert phrase in error.message


def test_both_raw_and_typed_contents_are_refused() -> None:
    message = request("UINT8", [1, 28, 28, 1], bytes(784))
    message.inputs[0].contents.uint_contents.extend([0] * 784)
    assert "both contents and raw_input_contents" in refused(message).message


def test_another_input_name_is_refused() -> None:
    message = service_pb2.ModelInferRequest(
        inputs=[Tensor(name="pixels", datatype="UINT8", shape=[1, 28, 28, 1])]
    )
    assert "got inputs ['pixels']" in refused(message).message


def test_outputs_default_to_the_probabilities_and_refuse_others() -> None:
    assert requested_outputs(service_pb2.ModelInferRequest()) == ["probabilities"]
    asked = service_pb2.ModelInferRequest(
        outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="logits")]
    )
    with pytest.raises(InputError, match="unknown output 'logits'"):
        requested_outputs(asked)


def test_statuses_map_to_grpc_codes() -> None:
    assert grpc_code(InputError("x", 404)) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(InputError("x", 413)) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(QueueFullError(10, 8)) == grpc.StatusCode.UNAVAILABLE


def test_ipv6_hosts_are_bracketed() -> None:
    assert listen_address("::", 8001) == "[::]:8001"
    assert listen_address("0.0.0.0", 8001) == "0.0.0.0:8001"
