"""The Open Inference Protocol (KServe v2) codec for the digit model: bytes in, bytes out.

The v2 model is the ONNX model itself: input ``image`` [-1, 28, 28, 1] and output
``probabilities`` [-1, 10]. The input may come as FP32 (the model's own type, values in
[0, 1]) or as UINT8 grey levels 0-255, which are scaled by 1/255 as /predict does.

Tensors travel as JSON ``data`` (row-major, flat or nested) or, with the binary tensor
data extension, as little-endian bytes after the JSON header, whose length the
``Inference-Header-Content-Length`` header gives. Outputs go back as binary data when
the request asks for it: ``binary_data`` on an output, else ``binary_data_output`` on
the request.

Versions are the model repository's: "1", "2", ... in URLs and in ``model_version``; the
model card's id (a training run) is reported in the model config.
"""

import math
import zlib
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from model_contract import CLASSES, IMAGE_SHAPE, INPUT_NAME, MODEL_NAME, OUTPUT_NAME, parse_version
from service.errors import InputError, about
from service.inference_protocol.schemas import (
    ConfigParameter,
    ConfigTensor,
    DynamicBatching,
    InferenceRequest,
    MetadataTensor,
    ModelConfigResponse,
    ModelMetadataResponse,
    Parameters,
    RequestInput,
    RequestOutput,
)
from service.inputs.model_input import check_count, to_model_input

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository")
HEADER_LENGTH = "Inference-Header-Content-Length"

# Protocol datatype -> little-endian numpy dtype, for the input datatypes accepted.
INPUT_DATATYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
OUTPUT_DATATYPE = "FP32"
_PIXELS = math.prod(IMAGE_SHAPE)
_FIX_FP32 = "FP32 holds values in [0, 1]: divide 0-255 grey levels by 255, or send UINT8"
_FIX_UINT8 = "UINT8 holds grey levels 0-255: send values in [0, 1] as FP32"
_UNSUPPORTED_PARAMETERS = {
    "shared_memory_region": "the shared memory extensions are not supported: send the tensor "
    "in the request body",
    "classification": "the classification extension is not supported: ask for the "
    "probabilities and take their argmax",
}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class DecodedRequest:
    """What the model needs from an infer request: the images and how to answer."""

    id: str | None
    images: np.ndarray  # float32 (N, 28, 28, 1) in [0, 1]
    outputs: tuple[RequestedOutput, ...]


@dataclass(frozen=True)
class EncodedResponse:
    body: bytes
    # The JSON header's length when binary tensors follow it; None for a JSON-only body.
    header_length: int | None

    @property
    def media_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


def model_metadata(versions: list[int]) -> ModelMetadataResponse:
    return ModelMetadataResponse(
        name=MODEL_NAME,
        versions=[str(v) for v in versions],
        platform=PLATFORM,
        inputs=[MetadataTensor(name=INPUT_NAME, datatype="FP32", shape=[-1, *IMAGE_SHAPE])],
        outputs=[MetadataTensor(name=OUTPUT_NAME, datatype=OUTPUT_DATATYPE, shape=[-1, CLASSES])],
    )


def model_config(
    model_id: str, max_images_per_request: int, batch_max_delay_ms: float
) -> ModelConfigResponse:
    """Triton's model config: with max_batch_size > 0, dims leave out the batch dimension."""
    return ModelConfigResponse(
        name=MODEL_NAME,
        platform=PLATFORM,
        backend=BACKEND,
        # A request may carry this many images: the batcher runs larger ones on their own.
        max_batch_size=max_images_per_request,
        input=[ConfigTensor(name=INPUT_NAME, data_type="TYPE_FP32", dims=list(IMAGE_SHAPE))],
        output=[ConfigTensor(name=OUTPUT_NAME, data_type="TYPE_FP32", dims=[CLASSES])],
        dynamic_batching=DynamicBatching(
            max_queue_delay_microseconds=round(batch_max_delay_ms * 1000)
        ),
        parameters={"model_id": ConfigParameter(string_value=model_id)},
    )


def check_model(name: str) -> None:
    """404 unless the URL names the served model."""
    if name != MODEL_NAME:
        raise InputError(f"unknown model {name!r}: this server serves {MODEL_NAME!r}", 404)


def url_version(text: str | None) -> int | None:
    """The version in a URL: None when left out; 404 for what no version can be called."""
    if not text:
        return None
    version = parse_version(text)
    if version is None:
        raise InputError(
            f"model {MODEL_NAME!r} has no version {text!r}: versions are positive integers, "
            "or leave the version out of the URL for the newest",
            404,
        )
    return version


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo a gzip or deflate Content-Encoding (tritonclient can compress requests)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise InputError(
            f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none", 415
        )
    # gzip has its own header; HTTP's "deflate" is the zlib format.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        # Bounded: a small compressed body must not inflate past the body limit.
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InputError(f"the body is not valid {encoding} data ({exc})", 400) from None
    if len(inflated) > max_bytes:
        raise InputError(
            f"the decompressed body is over the {max_bytes:,}-byte limit "
            "(MNIST_MAX_BODY_BYTES): send fewer images per request",
            413,
        )
    if not inflater.eof:
        raise InputError(f"the body is truncated {encoding} data", 400)
    return inflated


def decode_request(body: bytes, header_length: str | None, max_images: int) -> DecodedRequest:
    """An infer request body (JSON, maybe followed by binary tensors) -> the model's input."""
    header, binary = _split_body(body, header_length)
    request = _parse_header(header)
    image, consumed = _decode_inputs(request.inputs, binary, max_images)
    if consumed != len(binary):
        raise InputError(
            f"{len(binary) - consumed} bytes of binary data follow the JSON header but no "
            "input claims them: give each binary input its binary_data_size",
            400,
        )
    return DecodedRequest(request.id, image, _requested_outputs(request))


def encode_response(
    probabilities: np.ndarray, request: DecodedRequest, version: str
) -> EncodedResponse:
    """The response as ``schemas.InferenceResponse`` documents it, written straight to JSON:
    on the hot path a pydantic model per response would only be built to be dumped."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    # Only one output exists, so every requested output is the probabilities tensor.
    tensor = np.ascontiguousarray(probabilities, dtype="<f4")
    for requested in request.outputs:
        output: dict[str, Any] = {
            "name": requested.name,
            "shape": list(tensor.shape),
            "datatype": OUTPUT_DATATYPE,
        }
        if requested.binary:
            blobs.append(tensor.tobytes())
            output["parameters"] = {"binary_data_size": tensor.nbytes}
        else:
            output["data"] = tensor.reshape(-1)
        outputs.append(output)
    response: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = outputs
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join([header, *blobs]), len(header))


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    value = header_length.strip()
    # isascii: str.isdigit also takes digits such as '²' that int() refuses.
    if not (value.isascii() and value.isdigit()):
        raise InputError(
            f"{HEADER_LENGTH} must be the JSON header's length in bytes, got {header_length!r}",
            400,
        )
    length = int(value)
    if length > len(body):
        raise InputError(
            f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes: "
            "it must give the length of the JSON part at the start of the body",
            400,
        )
    view = memoryview(body)
    return body[:length], view[length:]


def _parse_header(header: bytes) -> InferenceRequest:
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InputError(
            f"the inference request is not valid JSON ({exc}); with binary tensors, set "
            f"{HEADER_LENGTH} to the JSON part's length",
            400,
        ) from None
    if not isinstance(document, dict):
        raise InputError(
            f"the inference request must be a JSON object, got {type(document).__name__}", 400
        )
    try:
        return InferenceRequest.model_validate(document)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        ]
        raise InputError(f"invalid inference request: {'; '.join(problems)}", 400) from None


def _decode_inputs(
    inputs: list[RequestInput], binary: memoryview, max_images: int
) -> tuple[np.ndarray, int]:
    names = [tensor.name for tensor in inputs]
    if names != [INPUT_NAME]:
        raise InputError(
            f"model {MODEL_NAME!r} takes exactly one input, {INPUT_NAME!r} "
            f"([-1, {', '.join(map(str, IMAGE_SHAPE))}], FP32 or UINT8); got inputs {names}",
            400,
        )
    [tensor] = inputs
    spec = check_tensor(tensor.name, tensor.datatype, tensor.shape, max_images)
    parameters = _checked_parameters(tensor.parameters, f"input {tensor.name!r}")
    size = parameters.get("binary_data_size")
    if size is None:
        return _images_from_json(tensor, spec), 0
    _check_binary(tensor, size, binary, spec)
    return images_from_bytes(binary, spec), int(size)


@dataclass(frozen=True)
class TensorSpec:
    """An input tensor's header, checked: what its values must then be."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    count: int  # images

    @property
    def values(self) -> int:
        return self.count * _PIXELS

    @property
    def nbytes(self) -> int:
        return self.values * self.dtype.itemsize


def check_tensor(name: str, datatype: str, shape: Sequence[int], max_images: int) -> TensorSpec:
    """The input's name, datatype and shape, as REST and gRPC both check them."""
    if name != INPUT_NAME:
        raise InputError(
            f"model {MODEL_NAME!r} takes exactly one input, {INPUT_NAME!r} "
            f"([-1, {', '.join(map(str, IMAGE_SHAPE))}], FP32 or UINT8); got input {name!r}",
            400,
        )
    dtype = INPUT_DATATYPES.get(datatype)
    if dtype is None:
        raise InputError(
            f"input {name!r} has datatype {datatype!r}: send FP32 (values in "
            "[0, 1]) or UINT8 (grey levels 0-255)",
            400,
        )
    shape = tuple(shape)
    return TensorSpec(name, datatype, shape, dtype, _image_count(name, shape, max_images))


def _image_count(name: str, shape: tuple[int, ...], max_images: int) -> int:
    expected = f"[N, {', '.join(map(str, IMAGE_SHAPE))}]"
    if len(shape) != 1 + len(IMAGE_SHAPE) or shape[1:] != IMAGE_SHAPE:
        raise InputError(
            f"input {name!r} has shape {list(shape)}; it must be {expected}, "
            "N images of 28x28 pixels and one channel",
            400,
        )
    with _named(name):
        return check_count(shape[0], max_images)


def _named(name: str) -> AbstractContextManager[None]:
    """The shared input checks' refusals, named for the input and in the protocol's terms:
    it has no 422, a well-formed but wrong request is its 400."""
    return about(f"input {name!r}", {422: 400})


def check_parameter_names(names: Collection[str], what: str) -> None:
    """Refuses the parameters of extensions this server does not implement."""
    for key, why in _UNSUPPORTED_PARAMETERS.items():
        if key in names:
            raise InputError(f"{what} has parameter {key!r}: {why}", 400)


def _checked_parameters(parameters: Parameters | None, what: str) -> Parameters:
    parameters = parameters or {}
    check_parameter_names(parameters.keys(), what)
    return parameters


def _images_from_json(tensor: RequestInput, spec: TensorSpec) -> np.ndarray:
    if tensor.data is None:
        raise InputError(
            f"input {tensor.name!r} has neither data nor parameters.binary_data_size: send "
            "its values as JSON data or as binary data after the JSON header",
            400,
        )
    if not isinstance(tensor.data, list):
        raise InputError(
            f"input {tensor.name!r}: data must be a JSON array of numbers (row-major, flat or "
            f"nested), got {type(tensor.data).__name__}",
            400,
        )
    try:
        # No dtype yet: numpy then shows strings, booleans and mixed nests for what they are.
        values = np.asarray(tensor.data)
    except (ValueError, TypeError, OverflowError):
        raise InputError(
            f"input {tensor.name!r}: data is ragged, nested lists of unequal lengths: send "
            "it flat or nested to the input's shape",
            400,
        ) from None
    return images_from_values(values, spec)


def images_from_values(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Typed values (JSON data, gRPC contents) -> the model's input, once checked."""
    integers = values.dtype.kind in "iu"
    if not (integers or (values.dtype.kind == "f" and spec.dtype.kind == "f")):
        wanted = "integers 0-255" if spec.dtype.kind == "u" else "numbers in [0, 1]"
        raise InputError(
            f"input {spec.name!r} ({spec.datatype}): data must hold only {wanted}, "
            f"got values of type {values.dtype}",
            400,
        )
    if values.size != spec.values:
        raise InputError(
            f"input {spec.name!r}: data has {values.size} values but shape {list(spec.shape)} "
            f"needs {spec.values}",
            400,
        )
    return _to_model_input(values, spec)


def _check_binary(
    tensor: RequestInput, size: bool | int | float | str, binary: memoryview, spec: TensorSpec
) -> None:
    if tensor.data is not None:
        raise InputError(
            f"input {tensor.name!r} has both data and binary_data_size: send its values once",
            400,
        )
    if not binary:
        raise InputError(
            f"input {tensor.name!r} has binary_data_size but no binary data follows the JSON: "
            f"send the tensor bytes after the JSON header, with {HEADER_LENGTH} giving its "
            "length",
            400,
        )
    if isinstance(size, bool) or not isinstance(size, int) or size != spec.nbytes:
        raise InputError(
            f"input {tensor.name!r}: binary_data_size is {size!r} but {tensor.datatype} shape "
            f"{tensor.shape} takes {spec.nbytes} bytes",
            400,
        )
    if len(binary) < spec.nbytes:
        raise InputError(
            f"input {tensor.name!r}: binary_data_size is {spec.nbytes} but only {len(binary)} "
            "bytes follow the JSON header",
            400,
        )


def images_from_bytes(data: bytes | memoryview, spec: TensorSpec) -> np.ndarray:
    """Little-endian tensor bytes (REST binary data, gRPC raw contents) -> the model's
    input; ``data`` may run on past the tensor (REST's next tensors), never fall short."""
    if len(data) < spec.nbytes:
        raise InputError(
            f"input {spec.name!r}: {spec.datatype} shape {list(spec.shape)} takes "
            f"{spec.nbytes} bytes, got {len(data)}",
            400,
        )
    # A copy: the body's bytes are read-only and the slice may be misaligned for float32.
    return _to_model_input(np.frombuffer(memoryview(data)[: spec.nbytes], spec.dtype).copy(), spec)


def _to_model_input(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    grey_levels = spec.dtype.kind == "u"
    with _named(spec.name):
        return to_model_input(
            values.reshape(spec.shape),
            grey_levels=grey_levels,
            fix=_FIX_UINT8 if grey_levels else _FIX_FP32,
        )


def _requested_outputs(request: InferenceRequest) -> tuple[RequestedOutput, ...]:
    parameters = request.parameters or {}
    default = _flag(parameters, "binary_data_output", False, "the request")
    if not request.outputs:
        return (RequestedOutput(OUTPUT_NAME, default),)
    names = [output.name for output in request.outputs]
    if len(set(names)) != len(names):
        raise InputError(f"outputs {names} name an output twice: ask for each once", 400)
    return tuple(_requested_output(output, default) for output in request.outputs)


def _requested_output(output: RequestOutput, default: bool) -> RequestedOutput:
    if output.name != OUTPUT_NAME:
        raise InputError(
            f"unknown output {output.name!r}: model {MODEL_NAME!r} has one output, {OUTPUT_NAME!r}",
            400,
        )
    what = f"output {output.name!r}"
    parameters = _checked_parameters(output.parameters, what)
    return RequestedOutput(output.name, _flag(parameters, "binary_data", default, what))


def _flag(parameters: Parameters, key: str, default: bool, what: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InputError(f"{what}: parameter {key!r} must be true or false, got {value!r}", 400)
    return value
