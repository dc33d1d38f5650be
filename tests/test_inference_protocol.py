"""The Open Inference Protocol codec, without a server: request bodies in, model input out.

Request bodies come from tritonclient itself where it can build them, so these tests hold
the codec to what the official client really sends and reads.
"""

import gzip
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton  # type: ignore[import-untyped]
from fastapi import FastAPI
from fastapi.testclient import TestClient

from model_contract import MODEL_NAME
from service.batcher import Batch, Inference, QueueFullError
from service.drain import Drain
from service.errors import InputError, install_error_handlers
from service.inference_protocol.codec import (
    HEADER_LENGTH,
    DecodedRequest,
    RequestedOutput,
    check_model,
    decode_request,
    decompress,
    encode_response,
    model_config,
    model_metadata,
    url_version,
)
from service.inference_protocol.routes import router
from service.inference_protocol.schemas import InferenceResponse
from service.models.repository import VersionNotReadyError
from service.settings import Settings
from service.tracing import Tracing

RNG = np.random.default_rng(6)
FLOATS = RNG.random((3, 28, 28, 1), dtype=np.float32)
GREYS = RNG.integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)


def client_body(
    images: np.ndarray, binary: bool, outputs: list[Any] | None = None, **options: Any
) -> tuple[bytes, str | None]:
    """The body and Inference-Header-Content-Length header tritonclient sends for images."""
    datatype = "UINT8" if images.dtype == np.uint8 else "FP32"
    tensor = triton.InferInput("image", list(images.shape), datatype)
    tensor.set_data_from_numpy(images, binary_data=binary)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, **options
    )
    return body, None if json_size is None else str(json_size)


def json_body(**request: Any) -> bytes:
    return orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY)


def image_input(**fields: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": "image",
        "shape": [1, 28, 28, 1],
        "datatype": "FP32",
        "data": [0.5] * 784,
    }
    return {**tensor, **fields}


def decode(body: bytes, header: str | None = None, max_images: int = 1024) -> DecodedRequest:
    return decode_request(body, header, max_images)


def refusal(body: bytes, header: str | None = None, max_images: int = 1024) -> InputError:
    with pytest.raises(InputError) as caught:
        decode(body, header, max_images)
    return caught.value


# --------------------------------------------------------------------------------------
# Decoding inputs
# --------------------------------------------------------------------------------------


def test_json_data_flat_and_nested_give_the_same_images() -> None:
    flat = decode(json_body(inputs=[image_input(shape=[3, 28, 28, 1], data=FLOATS.ravel())]))
    nested = decode(json_body(inputs=[image_input(shape=[3, 28, 28, 1], data=FLOATS.tolist())]))
    for decoded in (flat, nested):
        assert decoded.images.dtype == np.float32
        assert decoded.images.shape == (3, 28, 28, 1)
        np.testing.assert_array_equal(decoded.images, FLOATS)


@pytest.mark.parametrize("binary", [True, False])
def test_what_tritonclient_sends_decodes_exactly(binary: bool) -> None:
    body, header = client_body(FLOATS, binary)
    assert (header is not None) == binary
    decoded = decode(body, header)
    np.testing.assert_array_equal(decoded.images, FLOATS)


@pytest.mark.parametrize("binary", [True, False])
def test_uint8_grey_levels_are_scaled_by_1_over_255(binary: bool) -> None:
    body, header = client_body(GREYS, binary)
    decoded = decode(body, header)
    np.testing.assert_array_equal(decoded.images, GREYS.astype(np.float32) / np.float32(255))
    assert decoded.images.min() >= 0
    assert decoded.images.max() <= 1


def test_integers_are_accepted_as_fp32_data() -> None:
    decoded = decode(json_body(inputs=[image_input(data=[0, 1] * 392)]))
    assert decoded.images.ravel().tolist() == [0.0, 1.0] * 392


def test_the_request_id_is_kept_and_unknown_fields_are_ignored() -> None:
    body = json_body(id="req-7", model_name="mnist", inputs=[image_input()])
    assert decode(body).id == "req-7"
    assert decode(json_body(inputs=[image_input()])).id is None


# --------------------------------------------------------------------------------------
# Which outputs, and in which form
# --------------------------------------------------------------------------------------


def test_tritonclient_without_outputs_asks_for_all_outputs_in_binary() -> None:
    body, header = client_body(FLOATS, binary=True)
    assert decode(body, header).outputs == (RequestedOutput("probabilities", True),)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_requested_outputs_choose_their_form(binary: bool) -> None:
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    body, header = client_body(FLOATS, binary=True, outputs=outputs)
    assert decode(body, header).outputs == (RequestedOutput("probabilities", binary),)


@pytest.mark.parametrize(
    ("request_level", "output_parameters", "binary"),
    [
        (None, None, False),
        (True, None, True),
        (True, {"binary_data": False}, False),
        (False, {"binary_data": True}, True),
    ],
)
def test_an_outputs_binary_data_overrides_binary_data_output(
    request_level: bool | None, output_parameters: dict[str, bool] | None, binary: bool
) -> None:
    request: dict[str, Any] = {
        "inputs": [image_input()],
        "outputs": [{"name": "probabilities", "parameters": output_parameters}],
    }
    if request_level is not None:
        request["parameters"] = {"binary_data_output": request_level}
    assert decode(json_body(**request)).outputs == (RequestedOutput("probabilities", binary),)


# --------------------------------------------------------------------------------------
# Encoding responses, read back by tritonclient
# --------------------------------------------------------------------------------------

PROBABILITIES = RNG.random((3, 10), dtype=np.float32)


@pytest.mark.parametrize("binary", [True, False])
def test_responses_read_back_by_tritonclient(binary: bool) -> None:
    request = DecodedRequest("abc", FLOATS, (RequestedOutput("probabilities", binary),))
    encoded = encode_response(PROBABILITIES, request, "7")
    result = triton.InferenceServerClient.parse_response_body(
        encoded.body, header_length=encoded.header_length
    )
    np.testing.assert_array_equal(result.as_numpy("probabilities"), PROBABILITIES)
    response = result.get_response()
    assert response["id"] == "abc"
    assert (response["model_name"], response["model_version"]) == (MODEL_NAME, "7")
    [output] = response["outputs"]
    assert (output["datatype"], output["shape"]) == ("FP32", [3, 10])
    if binary:
        assert encoded.media_type == "application/octet-stream"
        assert encoded.header_length is not None
        assert encoded.body[encoded.header_length :] == PROBABILITIES.tobytes()
        assert output["parameters"] == {"binary_data_size": PROBABILITIES.nbytes}
        assert "data" not in output
    else:
        assert encoded.media_type == "application/json"
        assert encoded.header_length is None
        assert len(output["data"]) == 30
        assert "parameters" not in output


@pytest.mark.parametrize("binary", [True, False])
def test_the_response_written_by_hand_is_what_the_documented_schema_says(binary: bool) -> None:
    request = DecodedRequest("abc", FLOATS, (RequestedOutput("probabilities", binary),))
    encoded = encode_response(PROBABILITIES, request, "7")
    header = encoded.body[: encoded.header_length] if binary else encoded.body
    document = orjson.loads(header)
    parsed = InferenceResponse.model_validate(document)
    assert parsed.model_dump(exclude_none=True, mode="json") == document


def test_a_response_without_request_id_has_no_id() -> None:
    request = DecodedRequest(None, FLOATS, (RequestedOutput("probabilities", False),))
    assert "id" not in orjson.loads(encode_response(PROBABILITIES, request, "1").body)


# --------------------------------------------------------------------------------------
# Refusals: status and a message that says what to fix
# --------------------------------------------------------------------------------------

BAD_JSON_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("not an object", [1, 2], 400, "must be a JSON object"),
    ("no inputs", {"id": "x"}, 400, "inputs"),
    ("shape of strings", {"inputs": [image_input(shape=["1", 28, 28, 1])]}, 400, "shape"),
    ("numeric id", {"id": 5, "inputs": [image_input()]}, 400, "id"),
    ("unknown input", {"inputs": [image_input(name="pixels")]}, 400, "takes exactly one input"),
    ("two inputs", {"inputs": [image_input(), image_input()]}, 400, "takes exactly one input"),
    ("datatype INT64", {"inputs": [image_input(datatype="INT64")]}, 400, "FP32"),
    ("no channel axis", {"inputs": [image_input(shape=[1, 28, 28])]}, 400, "[N, 28, 28, 1]"),
    ("flat images", {"inputs": [image_input(shape=[1, 784])]}, 400, "[N, 28, 28, 1]"),
    ("no image", {"inputs": [image_input(shape=[0, 28, 28, 1], data=[])]}, 400, "at least 1"),
    ("too few values", {"inputs": [image_input(data=[0.5] * 783)]}, 400, "has 783 values"),
    ("ragged", {"inputs": [image_input(data=[[0.5] * 392, [0.5] * 391])]}, 400, "ragged"),
    ("strings", {"inputs": [image_input(data=["0.5"] * 784)]}, 400, "numbers in [0, 1]"),
    ("booleans", {"inputs": [image_input(data=[True] * 784)]}, 400, "numbers in [0, 1]"),
    ("data not a list", {"inputs": [image_input(data=0.5)]}, 400, "JSON array"),
    ("no data", {"inputs": [image_input(data=None)]}, 400, "neither data"),
    ("FP32 over 1", {"inputs": [image_input(data=[2.0] * 784)]}, 400, "divide 0-255"),
    ("FP32 negative", {"inputs": [image_input(data=[-0.5] * 784)]}, 400, "[0, 1]"),
    ("FP32 as 0-255", {"inputs": [image_input(data=[255] * 784)]}, 400, "divide 0-255"),
    (
        "UINT8 floats",
        {"inputs": [image_input(datatype="UINT8", data=[0.5] * 784)]},
        400,
        "integers 0-255",
    ),
    (
        "UINT8 over 255",
        {"inputs": [image_input(datatype="UINT8", data=[256] * 784)]},
        400,
        "0-255",
    ),
    (
        "unknown output",
        {"inputs": [image_input()], "outputs": [{"name": "logits"}]},
        400,
        "unknown output 'logits'",
    ),
    (
        "output twice",
        {"inputs": [image_input()], "outputs": [{"name": "probabilities"}] * 2},
        400,
        "twice",
    ),
    (
        "binary_data not a boolean",
        {
            "inputs": [image_input()],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": "yes"}}],
        },
        400,
        "true or false",
    ),
    (
        "binary_data_output not a boolean",
        {"inputs": [image_input()], "parameters": {"binary_data_output": 1}},
        400,
        "true or false",
    ),
    (
        "classification",
        {
            "inputs": [image_input()],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
        },
        400,
        "classification extension",
    ),
    (
        "shared memory",
        {"inputs": [image_input(parameters={"shared_memory_region": "r"})]},
        400,
        "shared memory",
    ),
    (
        "binary size without binary data",
        {"inputs": [image_input(data=None, parameters={"binary_data_size": 3136})]},
        400,
        HEADER_LENGTH,
    ),
]


@pytest.mark.parametrize(
    ("request_", "status", "phrase"),
    [
        pytest.param(request, status, phrase, id=name)
        for name, request, status, phrase in BAD_JSON_REQUESTS
    ],
)
def test_wrong_json_requests_are_refused_with_a_reason(
    request_: Any, status: int, phrase: str
) -> None:
    error = refusal(orjson.dumps(request_))
    assert error.status == status
    assert phrase in error.message


def test_malformed_json_is_a_400() -> None:
    error = refusal(b'{"inputs": [')
    assert error.status == 400
    assert "not valid JSON" in error.message


def test_more_images_than_allowed_is_a_413() -> None:
    body, header = client_body(FLOATS, binary=True)
    error = refusal(body, header, max_images=2)
    assert error.status == 413
    assert "MNIST_MAX_IMAGES_PER_REQUEST" in error.message


def binary_request(
    images: np.ndarray, size: Any = None, data: Any = None, extra: bytes = b""
) -> tuple[bytes, str]:
    blob = images.tobytes()
    datatype = "UINT8" if images.dtype == np.uint8 else "FP32"
    tensor = image_input(
        shape=list(images.shape),
        datatype=datatype,
        data=data,
        parameters={"binary_data_size": len(blob) if size is None else size},
    )
    header = json_body(inputs=[tensor])
    return header + blob + extra, str(len(header))


def test_hand_made_binary_request_matches_the_spec_example_layout() -> None:
    body, header = binary_request(GREYS)
    np.testing.assert_array_equal(decode(body, header).images, GREYS / np.float32(255))


@pytest.mark.parametrize(
    ("case", "phrase"),
    [
        ("size too small", "takes 2352 bytes"),
        ("size a boolean", "takes 2352 bytes"),
        ("data too", "both data and binary_data_size"),
        ("trailing bytes", "5 bytes of binary data"),
        ("truncated", "only 2000 bytes follow"),
        ("header too long", "body has only"),
        ("header not a number", "must be the JSON header's length"),
        ("header a superscript digit", "must be the JSON header's length"),
        ("header cuts the JSON", "not valid JSON"),
        ("NaN", "NaN or infinity"),
    ],
)
def test_wrong_binary_requests_are_refused_with_a_reason(case: str, phrase: str) -> None:
    body, header = binary_request(GREYS)
    if case == "size too small":
        body, header = binary_request(GREYS, size=100)
    elif case == "size a boolean":
        body, header = binary_request(GREYS, size=True)
    elif case == "data too":
        body, header = binary_request(GREYS, data=[0] * GREYS.size)
    elif case == "trailing bytes":
        body, header = binary_request(GREYS, extra=b"12345")
    elif case == "truncated":
        body = body[: int(header) + 2000]
    elif case == "header too long":
        header = str(len(body) + 1)
    elif case == "header not a number":
        header = "12ab"
    elif case == "header a superscript digit":
        header = "\N{SUPERSCRIPT TWO}"
    elif case == "header cuts the JSON":
        header = str(int(header) - 3)
    elif case == "NaN":
        images = FLOATS.copy()
        images[1, 5, 5, 0] = np.nan
        body, header = binary_request(images)
    error = refusal(body, header)
    assert error.status == 400
    assert phrase in error.message


# --------------------------------------------------------------------------------------
# Compressed bodies, model names and the model's descriptions
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_tritonclient_compressed_bodies_are_inflated(encoding: str, compress: Any) -> None:
    body, _ = client_body(FLOATS, binary=True)
    assert decompress(compress(body), encoding, 10**7) == body
    assert decompress(body, None, 10**7) == body
    assert decompress(body, "identity", 10**7) == body


def test_a_compression_bomb_stops_at_the_body_limit() -> None:
    with pytest.raises(InputError) as error:
        decompress(gzip.compress(bytes(10**6)), "gzip", 10**4)
    assert error.value.status == 413


@pytest.mark.parametrize(
    ("body", "encoding", "status"),
    [
        (b"plain", "br", 415),
        (b"not gzip at all", "gzip", 400),
        (gzip.compress(b"x" * 1000)[:-12], "gzip", 400),
    ],
)
def test_bad_compressed_bodies_are_refused(body: bytes, encoding: str, status: int) -> None:
    with pytest.raises(InputError) as error:
        decompress(body, encoding, 10**6)
    assert error.value.status == status


def test_the_served_model_is_found() -> None:
    check_model("mnist")


@pytest.mark.parametrize("name", ["resnet", "MNIST", ""])
def test_unknown_models_are_404(name: str) -> None:
    with pytest.raises(InputError) as error:
        check_model(name)
    assert error.value.status == 404


@pytest.mark.parametrize(("text", "version"), [(None, None), ("", None), ("1", 1), ("12", 12)])
def test_url_versions_are_positive_integers_or_left_out(
    text: str | None, version: int | None
) -> None:
    assert url_version(text) == version


@pytest.mark.parametrize("text", ["0", "01", "-1", "v2", "1.0", "latest"])
def test_what_no_version_can_be_called_is_404(text: str) -> None:
    with pytest.raises(InputError) as error:
        url_version(text)
    assert error.value.status == 404


def test_metadata_describes_the_onnx_model_with_a_variable_batch() -> None:
    metadata = model_metadata([1, 3]).model_dump()
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert metadata["versions"] == ["1", "3"]


def test_config_leaves_the_batch_out_of_dims_and_takes_its_limits_from_settings() -> None:
    config = model_config("run-42", max_images_per_request=512, batch_max_delay_ms=2.5)
    assert config.max_batch_size == 512
    assert config.input[0].dims == [28, 28, 1]
    assert config.input[0].data_type == "TYPE_FP32"
    assert config.output[0].dims == [10]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert config.parameters["model_id"].string_value == "run-42"


# --------------------------------------------------------------------------------------
# The router in-process, around a stand-in repository: failures keep the protocol's form
# --------------------------------------------------------------------------------------


class StandInVersion:
    name, model_id = "4", "stand-in"

    def __init__(self, failure: Exception | None):
        self.failure = failure

    async def infer(self, images: np.ndarray) -> Inference:
        if self.failure is not None:
            raise self.failure
        probabilities = np.full((len(images), 10), 0.1, np.float32)
        return Inference(probabilities, 0, Batch(len(images), 1, 0, 0))


class StandInRepository:
    def __init__(self, failure: Exception | None = None, ready: bool = True):
        self.failure = failure
        self.ready = ready

    def ready_versions(self) -> list[int]:
        return [4] if self.ready else []

    def resolve(self, version: int | None = None) -> StandInVersion:
        if not self.ready or version not in (None, 4):
            raise VersionNotReadyError(version, self.ready_versions())
        return StandInVersion(self.failure)


def protocol_client(repository: StandInRepository) -> TestClient:
    app = FastAPI()
    app.state.settings, app.state.repository = Settings(), repository
    app.state.drain, app.state.tracing = Drain(0), Tracing()
    install_error_handlers(app)
    app.include_router(router)
    # Server errors are answered, not raised into the test.
    return TestClient(app, raise_server_exceptions=False)


def infer(client: TestClient, url: str = "/v2/models/mnist/infer") -> Any:
    return client.post(url, content=json_body(inputs=[image_input()]))


def test_an_inference_failure_is_a_500_in_the_protocol_form() -> None:
    response = infer(protocol_client(StandInRepository(RuntimeError("onnxruntime broke"))))
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal server error: see the server log",
        "request_id": None,  # no access middleware around this bare router
    }


def test_a_full_queue_is_a_503_with_retry_after() -> None:
    response = infer(protocol_client(StandInRepository(QueueFullError(8192, 8192))))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "server busy" in response.json()["error"]


def test_a_repository_with_no_ready_version_is_not_ready_and_answers_503() -> None:
    client = protocol_client(StandInRepository(ready=False))
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/models/mnist/ready").json() == {"name": "mnist", "ready": False}
    response = infer(client)
    assert response.status_code == 503
    assert "no ready version" in response.json()["error"]


def test_a_version_that_is_not_ready_is_404_and_not_ready() -> None:
    client = protocol_client(StandInRepository())
    assert client.get("/v2/models/mnist/versions/4/ready").status_code == 200
    assert client.get("/v2/models/mnist/versions/5/ready").status_code == 404
    response = infer(client, "/v2/models/mnist/versions/5/infer")
    assert response.status_code == 404
    assert "ready versions are [4]" in response.json()["error"]


def test_the_stand_in_answers_when_nothing_fails() -> None:
    response = infer(protocol_client(StandInRepository()))
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "4"
    [output] = response.json()["outputs"]
    assert output["shape"] == [1, 10]
