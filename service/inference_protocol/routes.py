"""The Open Inference Protocol (KServe v2) REST API, as Triton's clients and tools speak it.

Every failure under /v2 answers the protocol's ``{"error": "..."}``, not the service's
``{"detail": "..."}``: the route class below turns errors into that form for these routes
only. Inference goes through the shared batcher, like /predict.
"""

import logging
import math
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from model_contract import IMAGE_SHAPE, INPUT_NAME, MODEL_NAME
from service.dependencies import AppScopedRoute, DrainDep, RepositoryDep, SettingsDep
from service.errors import client_error, request_id
from service.inference_protocol import codec as protocol
from service.inference_protocol.schemas import (
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelConfigResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    ProtocolErrorResponse,
    ReadyResponse,
    ServerMetadataResponse,
)
from service.openapi import self_contained
from service.tracing import traced

logger = logging.getLogger(__name__)

SERVER_NAME = "mnist-serving"


def protocol_error(
    request: Request, message: str, status: int, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(
        {"error": message, "request_id": request_id(request)}, status, headers=headers
    )


def protocol_error_response(request: Request, exc: Exception) -> Response:
    """The protocol's answer to a failure: ``{"error": ...}``, a 500 for one of ours.

    ProtocolRoute answers through it, and so does the inference dispatcher.
    """
    error = client_error(exc, validation_status=400)
    if error is not None:
        return protocol_error(request, *error)
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return protocol_error(request, "internal server error: see the server log", 500)


class ProtocolRoute(APIRoute):
    """An APIRoute whose errors come out as the protocol's ``{"error": ...}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return protocol_error_response(request, exc)

        return handle


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ProtocolErrorResponse, "description": why}
    for code, why in {
        400: "Malformed or wrong request: JSON, datatype, shape, values, outputs.",
        404: "Unknown model, or a version that is not ready.",
        413: "Too many images in one request, or a body over the limit.",
        415: "Content-Encoding not supported.",
        503: "Not ready, or the queue is full: retry after the Retry-After seconds.",
        504: "Its deadline (MNIST_REQUEST_TIMEOUT_MS) passed before the model ran it.",
    }.items()
}

router = APIRouter(
    prefix="/v2", tags=["open inference protocol"], route_class=ProtocolRoute, responses=ERRORS
)


# An enum so that clients and fuzzers know the one name that is served; any other is a 404
# (the protocol's answer to an unknown model), not a validation error.
ModelName = Annotated[
    str, Path(description='The model: "mnist".', json_schema_extra={"enum": [MODEL_NAME]})
]


async def _version_in_url(request: Request, model_name: ModelName) -> int | None:
    """The version the URL names (None without one), once the model name is checked."""
    protocol.check_model(model_name)
    # The version comes from path_params so that routes without {model_version} do not
    # take it as a query parameter; _VERSIONED documents it where it is in the path.
    return protocol.url_version(request.path_params.get("model_version"))


# Handlers and this dependency are async: they never block, and sync ones would each
# cost a trip through the thread pool.
UrlVersion = Annotated[int | None, Depends(_version_in_url)]
_VERSIONED: dict[str, Any] = {
    "parameters": [
        {
            "name": "model_version",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": "^[1-9][0-9]*$", "example": "1"},
            "description": "A ready version of the model: see GET /v2/models/mnist.",
        }
    ]
}


@router.get("", response_model=ServerMetadataResponse, summary="Server metadata")
async def server_metadata(request: Request) -> ServerMetadataResponse:
    return ServerMetadataResponse(
        name=SERVER_NAME, version=request.app.version, extensions=list(protocol.EXTENSIONS)
    )


@router.get("/health/live", response_model=LiveResponse, summary="The server is up")
async def live() -> LiveResponse:
    return LiveResponse(live=True)


@router.get("/health/ready", response_model=ReadyResponse, summary="The server can infer")
async def ready(repository: RepositoryDep, drain: DrainDep) -> ReadyResponse | Response:
    if not repository.ready or drain.draining:
        return JSONResponse({"ready": False}, 503)
    return ReadyResponse(ready=True)


@router.get(
    "/models/{model_name}/ready", response_model=ModelReadyResponse, summary="The model can infer"
)
@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_model=ModelReadyResponse,
    summary="This model version can infer",
    openapi_extra=_VERSIONED,
)
async def model_ready(
    version: UrlVersion, repository: RepositoryDep
) -> ModelReadyResponse | Response:
    if version is not None:
        repository.resolve(version)  # 404, as for the version's other endpoints
    elif not repository.ready:
        return JSONResponse({"name": MODEL_NAME, "ready": False}, 503)
    return ModelReadyResponse(name=MODEL_NAME, ready=True)


@router.get("/models/{model_name}", response_model=ModelMetadataResponse, summary="Model metadata")
@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=ModelMetadataResponse,
    summary="Model version metadata",
    openapi_extra=_VERSIONED,
)
async def model_metadata(version: UrlVersion, repository: RepositoryDep) -> ModelMetadataResponse:
    if version is not None:
        repository.resolve(version)  # 404 unless that version is ready
    return protocol.model_metadata(repository.ready_versions())


@router.get(
    "/models/{model_name}/config",
    response_model=ModelConfigResponse,
    summary="Triton's model configuration (perf_analyzer reads max_batch_size here)",
)
@router.get(
    "/models/{model_name}/versions/{model_version}/config",
    response_model=ModelConfigResponse,
    summary="Triton's model configuration of this version",
    openapi_extra=_VERSIONED,
)
async def model_config(
    version: UrlVersion, repository: RepositoryDep, settings: SettingsDep
) -> ModelConfigResponse:
    return protocol.model_config(
        repository.resolve(version).model_id,
        settings.max_images_per_request,
        settings.batch_max_delay_ms,
    )


def _infer_request_schema() -> dict[str, Any]:
    """The request model's schema, narrowed to what this model takes: one input, named
    ``image``, of a datatype it reads, in four dimensions. The model itself stays generic
    so that each of these gets the protocol's own message rather than pydantic's."""
    schema = self_contained(InferenceRequest.model_json_schema())
    inputs = schema["properties"]["inputs"]
    inputs.update(minItems=1, maxItems=1)
    tensor = inputs["items"]["properties"]
    tensor["name"]["enum"] = [INPUT_NAME]
    tensor["datatype"]["enum"] = sorted(protocol.INPUT_DATATYPES)
    tensor["shape"].update(minItems=1 + len(IMAGE_SHAPE), maxItems=1 + len(IMAGE_SHAPE))
    return schema


_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "An inference request. Input `image`: FP32 in [0, 1] or UINT8 0-255, shape "
            "[N, 28, 28, 1], as JSON `data` or, with the binary tensor data extension, as "
            "bytes after the JSON (the Inference-Header-Content-Length header gives the JSON's "
            "length and parameters.binary_data_size each tensor's)."
        ),
        "content": {
            "application/json": {
                "schema": _infer_request_schema(),
                "example": {
                    "inputs": [
                        {
                            "name": INPUT_NAME,
                            "shape": [1, *IMAGE_SHAPE],
                            "datatype": "UINT8",
                            "data": [0] * math.prod(IMAGE_SHAPE),
                        }
                    ]
                },
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class InferRoute(ProtocolRoute, AppScopedRoute):
    """The protocol's errors, and no per-request dependency solving: infer is the hot path.
    Its path parameters are read in the endpoint and documented in ``_INFER_PATH``."""


_MODEL_NAME_PARAMETER: dict[str, Any] = {
    "name": "model_name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": [MODEL_NAME]},
    "description": 'The model: "mnist".',
}


async def infer(request: Request, repository: RepositoryDep, settings: SettingsDep) -> Response:
    version = await _version_in_url(request, request.path_params["model_name"])
    tracing = traced(request)
    with tracing.span("decode"):
        body = protocol.decompress(
            await request.body(), request.headers.get("content-encoding"), settings.max_body_bytes
        )
        decoded = protocol.decode_request(
            body, request.headers.get(protocol.HEADER_LENGTH), settings.max_images_per_request
        )
    if decoded.id is None:  # the protocol's id names the request: ours when it has none
        decoded = replace(decoded, id=request_id(request))
    # Resolved only now, and run at once: the whole request runs on the version it got.
    served = repository.resolve(version)
    request.state.images, request.state.model_version = len(decoded.images), served.name
    result = await served.infer(decoded.images)
    tracing.record_inference(result, served)
    with tracing.span("encode"):
        encoded = protocol.encode_response(result.probabilities, decoded, served.name)
    headers = None
    if encoded.header_length is not None:
        headers = {protocol.HEADER_LENGTH: str(encoded.header_length)}
    return Response(encoded.body, media_type=encoded.media_type, headers=headers)


for _path, _summary, _parameters in (
    ("/models/{model_name}/infer", "Infer", [_MODEL_NAME_PARAMETER]),
    (
        "/models/{model_name}/versions/{model_version}/infer",
        "Infer with this model version",
        [_MODEL_NAME_PARAMETER, *_VERSIONED["parameters"]],
    ),
):
    router.add_api_route(
        _path,
        infer,
        methods=["POST"],
        summary=_summary,
        response_model=InferenceResponse,
        openapi_extra={**_INFER_BODY, "parameters": _parameters},
        route_class_override=InferRoute,
    )
