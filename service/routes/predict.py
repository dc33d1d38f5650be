"""POST /predict: digits for images sent as JSON arrays, image files or raw tensors."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from model_contract import parse_version
from service import preprocessing
from service.decode_budget import DecodeBudget
from service.dependencies import DecodeBudgetDep, RepositoryDep, SettingsDep
from service.errors import InputError
from service.schemas import ErrorResponse, PredictJSONRequest, PredictResponse
from service.settings import Settings
from service.tracing import traced

router = APIRouter(tags=["predict"])

_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp")
# A bar three pixels wide: the model reads it as a 1.
_ONE = [
    [1.0 if 13 <= c <= 15 and 4 <= r <= 23 else 0.0 for c in range(preprocessing.SIDE)]
    for r in range(preprocessing.SIDE)
]

_DTYPES = ("uint8", "float32")
_SHAPE_PATTERN = r"^[0-9]+(,[0-9]+)*$"

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
        "schema": {"type": "string", "enum": list(_DTYPES)},
        "description": "application/octet-stream only: uint8 (0-255) or float32 ([0, 1]).",
    },
    {
        "name": "shape",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": _SHAPE_PATTERN, "example": "256,28,28"},
        "description": "application/octet-stream only: (N,28,28), (N,28,28,1) or (N,784).",
    },
]

_OPENAPI_BODY: dict[str, Any] = {
    "parameters": _PARAMETERS,
    "requestBody": {
        "required": True,
        "description": (
            "One of: a JSON body (`image` or `images`); image files (PNG, JPEG, GIF, BMP, "
            "WebP) as multipart/form-data, field `file`, repeated for several; one image file "
            "as the raw body with its `image/*` type; a raw tensor as application/octet-stream "
            "with the `dtype` and `shape` query parameters; or a `.npy` file as "
            "application/x-npy. Image files are made MNIST-like first: transparency on white, "
            "grey, dark-on-light inverted, cropped, longest side scaled to 20 px, centred by "
            "mass in 28x28."
        ),
        "content": {
            "application/json": {
                "schema": PredictJSONRequest.model_json_schema(),
                "examples": {
                    "one image, floats in [0, 1]": {"value": {"image": _ONE}},
                    "a batch, 0-255 integers, flat": {
                        "value": {"images": [[0] * 784, [255] * 784]}
                    },
                },
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in _IMAGE_TYPES},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Little-endian tensor bytes, described by `dtype` and `shape`.",
            },
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}

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
    openapi_extra=_OPENAPI_BODY,
)
async def predict(
    request: Request, repository: RepositoryDep, settings: SettingsDep, budget: DecodeBudgetDep
) -> Response:
    tracing = traced(request)
    version = requested_version(request.query_params.get("version"))
    # Checked whatever the body: a parameter the document declares is either valid or
    # refused, never ignored (a typo in dtype must not pass unnoticed with a JSON body).
    tensor = _tensor_description(
        request.query_params.get("dtype"), request.query_params.get("shape")
    )
    with tracing.span("decode"):
        images = await _read_images(request, settings, budget, tensor)
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


def _tensor_description(
    dtype: str | None, shape: str | None
) -> tuple[str | None, tuple[int, ...] | None]:
    if dtype is not None and dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    return dtype, None if shape is None else _parse_shape(shape)


async def _read_images(
    request: Request,
    settings: Settings,
    budget: DecodeBudget,
    tensor: tuple[str | None, tuple[int, ...] | None],
) -> np.ndarray:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = settings.max_images_per_request
    if content_type == "application/json":
        return _images_from_json_body(await request.body(), limit)
    if content_type == "multipart/form-data":
        return await _images_from_form(request, settings, budget)
    if content_type.startswith("image/"):
        files = [("the body", await request.body())]
        return await _decode_files(files, settings, budget)
    if content_type == "application/octet-stream":
        dtype, shape = tensor
        if dtype is None or shape is None:
            raise InputError(
                "a raw tensor body needs the query parameters dtype (uint8 or float32) and "
                "shape, e.g. /predict?dtype=uint8&shape=256,28,28",
                status=400,
            )
        return preprocessing.images_from_tensor(
            await request.body(), dtype, shape, max_images=limit
        )
    if content_type == "application/x-npy":
        return preprocessing.images_from_npy(await request.body(), max_images=limit)
    raise InputError(
        f"unsupported content type {content_type or '(none)'!r}: send application/json, "
        "multipart/form-data with field 'file', an image/* body, application/octet-stream "
        "with dtype and shape, or application/x-npy",
        status=415,
    )


def _images_from_json_body(body: bytes, max_images: int) -> np.ndarray:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(
            f"the body is not valid JSON ({exc}); NaN and Infinity are not JSON", 400
        ) from None
    if isinstance(document, dict) and document.keys() == {"image"}:
        return preprocessing.image_from_json(document["image"])[np.newaxis, :, :, np.newaxis]
    if isinstance(document, dict) and document.keys() == {"images"}:
        return preprocessing.images_from_json(document["images"], max_images=max_images)
    got = f"keys {sorted(document)}" if isinstance(document, dict) else type(document).__name__
    raise InputError(
        'send a JSON object with exactly one key: "image" (one 28x28 image) or "images" '
        f"(a list of them); got {got}"
    )


async def _images_from_form(
    request: Request, settings: Settings, budget: DecodeBudget
) -> np.ndarray:
    limit = settings.max_images_per_request
    # One file over the limit is enough to tell; the parser refuses more before reading them.
    async with request.form(max_files=limit + 1, max_part_size=settings.max_body_bytes) as form:
        files = form.getlist("file")
        if not files:
            raise InputError(
                "multipart body has no field 'file': send each image as a file part named 'file'"
            )
        if len(files) > limit:
            raise InputError(
                f"more than {limit} files in one request (MNIST_MAX_IMAGES_PER_REQUEST): "
                "split them over several requests",
                status=413,
            )
        named_files = []
        for index, part in enumerate(files, start=1):
            if not isinstance(part, UploadFile):
                raise InputError(f"field 'file' #{index} is text, not a file upload")
            named_files.append((f"file {part.filename or f'#{index}'}", await part.read()))
    return await _decode_files(named_files, settings, budget)


async def _decode_files(
    files: list[tuple[str, bytes]], settings: Settings, budget: DecodeBudget
) -> np.ndarray:
    """Image files -> (N, 28, 28, 1), in the thread pool: a big photo takes milliseconds
    to decode, which on the event loop would stall every other request meanwhile.

    The headers are read first, so that the budget admits or refuses the request before a
    pixel is decoded. The files decode one after another: the largest is what the request
    holds at once.
    """
    opened = await run_in_threadpool(_open_files, files, settings)
    try:
        needed = max(preprocessing.decoded_bytes(image) for _, image in opened)
        async with budget.admit(needed):
            return await run_in_threadpool(_decoded_files, opened)
    finally:
        for _, image in opened:
            image.close()


def _open_files(
    files: list[tuple[str, bytes]], settings: Settings
) -> list[tuple[str, Image.Image]]:
    opened: list[tuple[str, Image.Image]] = []
    try:
        for name, data in files:
            with _named(name):
                image = preprocessing.open_image(
                    data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes
                )
            opened.append((name, image))
    except BaseException:
        for _, image in opened:
            image.close()
        raise
    return opened


def _decoded_files(opened: list[tuple[str, Image.Image]]) -> np.ndarray:
    images = []
    for name, image in opened:
        with _named(name):
            images.append(preprocessing.image_from_opened(image))
    return np.stack(images)[:, :, :, np.newaxis]


@contextmanager
def _named(name: str) -> Iterator[None]:
    """Says which file an InputError is about: one of many parts, or the body."""
    try:
        yield
    except InputError as exc:
        raise InputError(f"{name}: {exc.message}", exc.status, exc.headers) from exc


def _parse_shape(shape: str) -> tuple[int, ...]:
    if re.fullmatch(_SHAPE_PATTERN, shape):
        return tuple(int(d) for d in shape.split(","))
    raise InputError(
        f"shape {shape!r} is not a comma-separated list of integers, e.g. 256,28,28", 400
    )


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
