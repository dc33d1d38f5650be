"""The Open Inference Protocol over gRPC: Triton's GRPCInferenceService, beside REST.

It runs in each worker, on the worker's event loop, and shares everything with REST: the
model repository (versions, and the batcher of each), the codec's checks of an input
tensor, the limits and the API keys; and operations see its calls as they see REST's
requests (grpc_observability.py: an access line, the request metrics, a span). Each
worker binds the same port: gRPC's server sets SO_REUSEPORT on Linux, so the kernel spreads
connections over the workers as it does the REST sockets'.

The messages and the servicer base are the ones tritonclient ships, generated from
Triton's own proto, so that what this serves is what Triton's clients and perf_analyzer
speak. RPCs not implemented here (the repository, shared memory, streaming, statistics)
answer UNIMPLEMENTED, the base class's default.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
import numpy as np
from google.protobuf import json_format  # type: ignore[import-untyped]
from tritonclient.grpc import (  # type: ignore[import-untyped]
    model_config_pb2,
    service_pb2,
    service_pb2_grpc,
)

from model_contract import INPUT_NAME, MODEL_NAME, OUTPUT_NAME
from service.admission import InflightLimit
from service.auth import KeyRing, presented_key
from service.deadlines import REQUEST_DEADLINE
from service.drain import Drain
from service.errors import RETRY_AFTER_S, InputError
from service.inference_protocol import codec as protocol
from service.inference_protocol.grpc_observability import ObservingInterceptor, this_call
from service.metrics import Metrics
from service.models.repository import ModelRepository
from service.settings import Settings
from service.tracing import Tracing

logger = logging.getLogger(__name__)

SERVER_NAME = "mnist-serving"
# The codec's REST statuses, as gRPC codes. Too many images is the client's to fix, like
# any other bad request; a full queue or no ready version yet is worth a retry.
_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_HOW = "send it as gRPC metadata `authorization: Bearer KEY` or `x-api-key: KEY`"
# What each typed-contents datatype travels in (Triton's InferTensorContents).
_CONTENTS = {"FP32": ("fp32_contents", np.float32), "UINT8": ("uint_contents", np.uint32)}

Reply = TypeVar("Reply")
Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Reply]]


def grpc_code(error: InputError) -> grpc.StatusCode:
    return _CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT)


def _answers_errors(method: Method[Reply]) -> Method[Reply]:
    """The codec's and the repository's InputErrors as gRPC statuses, with their message."""

    @wraps(method)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Reply:
        try:
            return await method(self, request, context)
        except InputError as exc:
            if exc.status == 413:  # REST counts its 413s so: the reason survives the code
                self._metrics.rejected.labels("too_large").inc()
            trailers: tuple[tuple[str, str], ...] = ()
            if exc.headers and "Retry-After" in exc.headers:
                trailers = (("retry-after", exc.headers["Retry-After"]),)
            await context.abort(grpc_code(exc), exc.message, trailing_metadata=trailers)
            raise  # unreachable: abort raises

    return call


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        repository: ModelRepository,
        settings: Settings,
        keys: KeyRing,
        drain: Drain,
        metrics: Metrics,
        inflight: InflightLimit,
        version: str,
        tracing: Tracing | None = None,
    ):
        self._repository = repository
        self._settings = settings
        self._keys = keys
        self._drain = drain
        self._metrics = metrics
        self._inflight = inflight
        self._version = version
        self._tracing = tracing or Tracing()  # off unless given one

    # --- health: open to all, like REST's /v2/health/ -------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        ready = self._repository.ready and not self._drain.draining
        return service_pb2.ServerReadyResponse(ready=ready)

    # --- the model: an API key when keys are set, like REST's /v2/models/ -----------------

    @_answers_errors
    async def ModelReady(self, request: Any, context: Any) -> Any:
        self._authorize(context)
        # Not an error for an unknown model or version, as Triton answers: just not ready.
        if request.name != MODEL_NAME:
            return service_pb2.ModelReadyResponse(ready=False)
        try:
            self._repository.resolve(protocol.url_version(request.version))
        except InputError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @_answers_errors
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        self._authorize(context)
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=["model_configuration"]
        )

    @_answers_errors
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        self._authorize(context)
        self._resolve(request.name, request.version)
        metadata = protocol.model_metadata(self._repository.ready_versions())
        return json_format.ParseDict(
            metadata.model_dump(), service_pb2.ModelMetadataResponse(), ignore_unknown_fields=True
        )

    @_answers_errors
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        """What perf_analyzer reads first: max_batch_size above all."""
        self._authorize(context)
        served = self._resolve(request.name, request.version)
        config = protocol.model_config(
            served.model_id,
            self._settings.max_images_per_request,
            self._settings.batch_max_delay_ms,
        )
        return service_pb2.ModelConfigResponse(
            config=json_format.ParseDict(
                config.model_dump(exclude_none=True), model_config_pb2.ModelConfig()
            )
        )

    @_answers_errors
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        deadline = self._deadline()  # from arrival, as REST's: decoding counts too
        refusal = self._inflight.refusal()
        if refusal is not None:
            raise InputError(refusal, 503, {"Retry-After": str(RETRY_AFTER_S)})
        with self._inflight.held():
            return await self._infer(request, context, deadline)

    async def _infer(self, request: Any, context: Any, deadline: float | None) -> Any:
        self._authorize(context)
        protocol.check_model(request.model_name)
        version = protocol.url_version(request.model_version)
        tracing = self._tracing
        with tracing.span("decode"):
            images = decode_images(request, self._settings.max_images_per_request)
            outputs = requested_outputs(request)
        # Resolved only now, and run at once: the whole request runs on the version it got.
        served = self._repository.resolve(version)
        call = this_call()
        call.images, call.model_version = len(images), served.name
        token = REQUEST_DEADLINE.set(deadline)
        try:
            result = await served.infer(images)
        finally:
            REQUEST_DEADLINE.reset(token)
        tracing.record_inference(result, served)
        with tracing.span("encode"):
            return self._response(request, served, result.probabilities, outputs)

    def _response(
        self, request: Any, served: Any, probabilities: np.ndarray, outputs: list[str]
    ) -> Any:
        tensor = np.ascontiguousarray(probabilities, dtype="<f4")
        shape = list(tensor.shape)
        return service_pb2.ModelInferResponse(
            model_name=MODEL_NAME,
            model_version=served.name,
            id=request.id,
            outputs=[
                service_pb2.ModelInferResponse.InferOutputTensor(
                    name=name, datatype=protocol.OUTPUT_DATATYPE, shape=shape
                )
                for name in outputs
            ],
            raw_output_contents=[tensor.tobytes()] * len(outputs),
        )

    def _deadline(self) -> float | None:
        """REST's deadline (service/admission.py), from now: past it nobody waits for the
        answer, and the batcher answers DEADLINE_EXCEEDED without running the job."""
        timeout_ms = self._settings.request_timeout_ms
        return time.perf_counter() + timeout_ms / 1000 if timeout_ms > 0 else None

    def _resolve(self, name: str, version: str) -> Any:
        protocol.check_model(name)
        return self._repository.resolve(protocol.url_version(version))

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        """The REST side's key check (service/auth.py), on the call's metadata."""
        if not self._keys:
            return
        headers = [
            (key.encode("latin-1"), value.encode("latin-1"))
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)  # "-bin" metadata is bytes, and never a key
        ]
        presented = presented_key(headers)
        if presented is None:
            self._metrics.auth_failures.labels("missing").inc()
            raise InputError(f"this API takes an API key: {_HOW}", 401)
        key = self._keys.find(presented)
        if key is None:
            self._metrics.auth_failures.labels("invalid").inc()
            raise InputError(
                f"the API key is not valid: {_HOW} with a key from MNIST_API_KEYS", 401
            )
        this_call().key_id = key.id


def decode_images(request: Any, max_images: int) -> np.ndarray:
    """A ModelInferRequest's input -> the model's (N, 28, 28, 1) float32 in [0, 1], through
    the checks REST's tensors go through."""
    names = [tensor.name for tensor in request.inputs]
    if names != [INPUT_NAME]:
        raise InputError(
            f"model {MODEL_NAME!r} takes exactly one input, {INPUT_NAME!r} (FP32 or UINT8, "
            f"[-1, 28, 28, 1]); got inputs {names}",
            400,
        )
    [tensor] = request.inputs
    spec = protocol.check_tensor(tensor.name, tensor.datatype, tensor.shape, max_images)
    what = f"input {tensor.name!r}"
    protocol.check_parameter_names(tensor.parameters.keys(), what)
    raw: Sequence[bytes] = request.raw_input_contents
    if raw:
        if tensor.HasField("contents"):
            raise InputError(f"{what} has both contents and raw_input_contents: send it once", 400)
        if len(raw) != 1:
            raise InputError(
                f"{len(raw)} raw_input_contents for 1 input: send one per input, in order", 400
            )
        if len(raw[0]) != spec.nbytes:
            raise InputError(
                f"{what}: raw_input_contents has {len(raw[0])} bytes but {spec.datatype} shape "
                f"{list(spec.shape)} takes {spec.nbytes}",
                400,
            )
        return protocol.images_from_bytes(raw[0], spec)
    field, dtype = _CONTENTS[spec.datatype]
    values = getattr(tensor.contents, field)
    if not values:
        raise InputError(
            f"{what} has no data: send it in raw_input_contents or in contents.{field}", 400
        )
    return protocol.images_from_values(np.asarray(values, dtype=dtype), spec)


def requested_outputs(request: Any) -> list[str]:
    if not request.outputs:
        return [OUTPUT_NAME]
    names = [output.name for output in request.outputs]
    if len(set(names)) != len(names):
        raise InputError(f"outputs {names} name an output twice: ask for each once", 400)
    for output in request.outputs:
        if output.name != OUTPUT_NAME:
            raise InputError(
                f"unknown output {output.name!r}: model {MODEL_NAME!r} has one output, "
                f"{OUTPUT_NAME!r}",
                400,
            )
        protocol.check_parameter_names(output.parameters.keys(), f"output {output.name!r}")
    return names


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(
    servicer: InferenceServicer, settings: Settings, observing: ObservingInterceptor
) -> grpc.aio.Server:
    """Serving on MNIST_GRPC_PORT once this returns; start-up fails if it cannot bind."""
    server = grpc.aio.server(
        interceptors=[observing],
        options=[
            # Explicit, though Linux's default: every worker binds this same port.
            ("grpc.so_reuseport", 1),
            # REST's body limit, for the same images per request over either protocol.
            ("grpc.max_receive_message_length", settings.max_body_bytes),
        ],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = listen_address(settings.host, settings.grpc_port)
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC cannot listen on {address} (MNIST_GRPC_PORT): {exc}") from None
    await server.start()
    logger.info("gRPC (Open Inference Protocol) on %s", address)
    return server
