"""What /predict reads, one entry per format: the content types, the reader, the docs.

Adding a format is adding an entry here: the route reads every body through ``read``,
and both the OpenAPI request body and the 415 message are made from the same table.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.requests import Request

from service.decode_budget import DecodeBudget
from service.errors import InputError
from service.inputs import image_files, json_arrays, tensors, uploads
from service.inputs.model_input import SIDE, ModelInput
from service.schemas import PredictJSONRequest
from service.settings import Settings

_BINARY: Final = {"schema": {"type": "string", "format": "binary"}}
# A bar three pixels wide: the model reads it as a 1.
_ONE: Final = [
    [1.0 if 13 <= c <= 15 and 4 <= r <= 23 else 0.0 for c in range(SIDE)] for r in range(SIDE)
]


@dataclass(frozen=True)
class Body:
    """A request body to read, with what its reader may need besides the bytes."""

    request: Request
    settings: Settings
    budget: DecodeBudget
    dtype: str | None  # a raw tensor's query parameters, already checked
    shape: tuple[int, ...] | None

    @property
    def max_images(self) -> int:
        return self.settings.max_images_per_request


@dataclass(frozen=True)
class Format:
    media_types: tuple[str, ...]  # as documented; the first names the format in messages
    how: str  # what to send, for the docs and the 415 message
    read: Callable[[Body], Awaitable[ModelInput]]
    openapi: dict[str, Any] = field(default_factory=lambda: dict(_BINARY))
    prefix: str | None = None  # every content type under it is read too


async def _json(body: Body) -> ModelInput:
    return json_arrays.images_from_json_body(await body.request.body(), max_images=body.max_images)


async def _form(body: Body) -> ModelInput:
    files = await uploads.files_from_form(body.request, body.settings)
    return await uploads.images_from_files(files, body.settings, body.budget)


async def _image_file(body: Body) -> ModelInput:
    files = [("the body", await body.request.body())]
    return await uploads.images_from_files(files, body.settings, body.budget)


async def _tensor(body: Body) -> ModelInput:
    if body.dtype is None or body.shape is None:
        raise InputError(
            "a raw tensor body needs the query parameters dtype (uint8 or float32) and "
            "shape, e.g. /predict?dtype=uint8&shape=256,28,28",
            status=400,
        )
    return tensors.images_from_tensor(
        await body.request.body(), body.dtype, body.shape, max_images=body.max_images
    )


async def _npy(body: Body) -> ModelInput:
    return tensors.images_from_npy(await body.request.body(), max_images=body.max_images)


FORMATS: Final = (
    Format(
        ("application/json",),
        'a JSON body, `{"image": ...}` or `{"images": [...]}`',
        _json,
        {
            "schema": PredictJSONRequest.model_json_schema(),
            "examples": {
                "one image, floats in [0, 1]": {"value": {"image": _ONE}},
                "a batch, 0-255 integers, flat": {"value": {"images": [[0] * 784, [255] * 784]}},
            },
        },
    ),
    Format(
        ("multipart/form-data",),
        f"image files ({image_files.ACCEPTED}) as multipart/form-data, field `file`, "
        "repeated for several",
        _form,
        {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
                "required": ["file"],
            }
        },
    ),
    Format(
        image_files.MEDIA_TYPES,
        "one image file as the raw body, with its `image/*` type",
        _image_file,
        # The file's own first bytes tell its format: image/jpg or image/x-png read as well.
        prefix="image/",
    ),
    Format(
        ("application/octet-stream",),
        "a raw little-endian tensor as application/octet-stream, described by the `dtype` "
        "and `shape` query parameters",
        _tensor,
    ),
    Format(("application/x-npy",), "a `.npy` file as application/x-npy", _npy),
)
_BY_TYPE: Final = {media_type: f for f in FORMATS for media_type in f.media_types}


def format_for(content_type: str | None) -> Format:
    """The format a Content-Type names (parameters and case aside); 415 when none does."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    found = _BY_TYPE.get(media_type)
    if found is None:
        found = next((f for f in FORMATS if f.prefix and media_type.startswith(f.prefix)), None)
    if found is None:
        raise InputError(
            f"unsupported content type {media_type or '(none)'!r}: send "
            + "; or ".join(f.how.replace("`", "") for f in FORMATS),
            status=415,
        )
    return found


def openapi_request_body() -> dict[str, Any]:
    return {
        "required": True,
        "description": (
            "One of: "
            + "; ".join(f.how for f in FORMATS)
            + ". Image files are made MNIST-like first: transparency on white, grey, "
            "dark-on-light inverted, cropped, longest side scaled to 20 px, centred by mass "
            "in 28x28."
        ),
        "content": {media_type: f.openapi for f in FORMATS for media_type in f.media_types},
    }
