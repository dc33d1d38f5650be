"""POST /predict: digits for images sent as JSON arrays, image files or raw tensors.

What a body may be, and how each kind is read, is ``service.inputs.formats``' table.
"""

from typing import Any, Final

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.datastructures import QueryParams

from model_contract import parse_version
from service.dependencies import AppScopedRoute, DecodeBudgetDep, RepositoryDep, SettingsDep
from service.errors import InputError
from service.inputs import formats, tensors
from service.schemas import ErrorResponse, PredictResponse
from service.tracing import traced

router = APIRouter(tags=["predict"], route_class=AppScopedRoute)
_NO_QUERY: Final = QueryParams()

# Documented here but read by hand where used: FastAPI would parse them on every request.
_PARAMETERS = [
    {
        "name": "version",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
        "description": "The model version to answer with; default: the highest ready one.",
    },
    {
        "name": "dtype",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": list(tensors.TENSOR_DTYPES)},
        "description": "application/octet-stream only: uint8 (0-255) or float32 ([0, 1]).",
    },
    {
        "name": "shape",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": tensors.SHAPE_PATTERN, "example": "256,28,28"},
        "description": "application/octet-stream only: (N,28,28), (N,28,28,1) or (N,784).",
    },
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why}
    for code, why in {
        400: "Malformed body: invalid JSON, truncated image file, broken multipart.",
        413: "Body, image dimensions or number of images over the limits.",
        404: "The version asked for is not ready.",
        415: "Content type or image format not accepted.",
        422: "Well-formed but wrong: shapes, value ranges, NaN, blank image, version.",
        503: "No version ready yet, or queue full: retry after the Retry-After seconds.",
        504: "Its deadline (MNIST_REQUEST_TIMEOUT_MS) passed before the model ran it.",
    }.items()
}


@router.post(
    "/predict",
    summary="Predict the digit in each image",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra={"parameters": _PARAMETERS, "requestBody": formats.openapi_request_body()},
)
async def predict(
    request: Request, repository: RepositoryDep, settings: SettingsDep, budget: DecodeBudgetDep
) -> Response:
    tracing = traced(request)
    # Parsed only when there is one: most requests have none, and parsing costs a few us.
    query = request.query_params if request.scope["query_string"] else _NO_QUERY
    version = requested_version(query.get("version"))
    dtype, shape = tensors.tensor_description(query.get("dtype"), query.get("shape"))
    body_format = formats.format_for(request.headers.get("content-type"))
    with tracing.span("decode"):
        images = await body_format.read(formats.Body(request, settings, budget, dtype, shape))
    # Resolved only now, and run at once: the whole request runs on the version it got.
    served = repository.resolve(version)
    request.state.images, request.state.model_version = len(images), served.name
    result = await served.infer(images)
    tracing.record_inference(result, served)
    with tracing.span("encode"):
        body = _predictions_json(result.probabilities, served.model_id, served.name)
    return Response(body, media_type="application/json")


def requested_version(text: str | None) -> int | None:
    if text is None:
        return None
    version = parse_version(text.strip())
    if version is None:
        raise InputError(f"version {text!r} is not a positive integer: e.g. ?version=2")
    return version


def _predictions_json(probabilities: np.ndarray, model_id: str, version: str) -> bytes:
    digits = probabilities.argmax(axis=1).tolist()
    predictions = [
        {"digit": d, "confidence": float(row[d]), "probabilities": row}
        for d, row in zip(digits, probabilities, strict=True)
    ]
    return orjson.dumps(
        {"predictions": predictions, "model": model_id, "model_version": version},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
