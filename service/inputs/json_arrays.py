"""JSON arrays: ``{"image": ...}`` or ``{"images": [...]}`` in a /predict body.

One image is a 28x28 nested list (28 rows of 28 numbers) or a flat list of 784 numbers in
row-major order; a 28x28x1 nesting is accepted too. How values are read is decided per image:

- if every value is a JSON integer (no decimal point) and the largest is above 1, the
  image is in 0-255 grey levels: every value must lie in 0..255 and is divided by 255;
- otherwise the values are floats in [0, 1] and must lie in [0, 1]. An image of integers
  0 and 1 only is therefore read as a binary image in [0, 1], and ``255.0`` is an error
  (write ``255`` for a grey level).

0 is the background and the maximum is ink: white digit on black, as in MNIST. Values must
be finite numbers; strings, ``null``, booleans, objects and rows of different lengths are
rejected with 422. A batch (``images``) is a non-empty list of such images, each read on
its own rules, at most ``max_images`` long (413 beyond). Note: a boolean mixed into an
image of numbers cannot be told apart from 0/1 without a slow per-value scan, so it reads
as 0 or 1; an image made only of booleans is rejected.
"""

from collections import deque
from typing import Any, Final

import numpy as np
import orjson

from service.errors import InputError
from service.inputs.model_input import PIXELS, SIDE, ModelInput, check_count, to_model_input

_IMAGE_SHAPES: Final = ((SIDE, SIDE), (PIXELS,), (SIDE, SIDE, 1))
_HOW_VALUES: Final = "send floats in [0, 1] or integer grey levels 0-255"
_HOW_SHAPE: Final = "send 28 rows of 28 numbers, or one flat list of 784"
_FIX_FLOATS: Final = (
    "numbers with a decimal point are read as floats in [0, 1]; for grey levels 0-255 "
    "send integers, or divide by 255"
)
_FIX_GREY: Final = f"integers are read as grey levels 0-255 once one is above 1; {_HOW_VALUES}"
_FIX_BINARY: Final = f"integers 0 and 1 only are read as a binary image; {_HOW_VALUES}"


def images_from_json_body(body: bytes, *, max_images: int) -> ModelInput:
    """A /predict JSON body, ``{"image": ...}`` or ``{"images": [...]}``, -> the model's input."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(
            f"the body is not valid JSON ({exc}); NaN and Infinity are not JSON", 400
        ) from None
    if isinstance(document, dict) and document.keys() == {"image"}:
        return _image(document["image"])
    if isinstance(document, dict) and document.keys() == {"images"}:
        return images_from_json(document["images"], max_images=max_images)
    got = f"keys {sorted(document)}" if isinstance(document, dict) else type(document).__name__
    raise InputError(
        'send a JSON object with exactly one key: "image" (one 28x28 image) or "images" '
        f"(a list of them); got {got}"
    )


def image_from_json(value: object) -> ModelInput:
    """One image from parsed JSON (see the module docstring) -> float32 (28, 28) in [0, 1]."""
    return _image(value)[0, :, :, 0]


def images_from_json(value: object, *, max_images: int) -> ModelInput:
    """A list of images from parsed JSON -> float32 (N, 28, 28, 1); each image on its own rules."""
    if not isinstance(value, list):
        raise InputError(
            f'"images" must be a list of images, got {_json_type(value)}; '
            'for one image send {"image": [...]}'
        )
    batch = np.empty((check_count(len(value), max_images), SIDE, SIDE, 1), dtype=np.float32)
    for index, item in enumerate(value):
        try:
            batch[index] = _image(item)[0]
        except InputError as exc:
            hint = ""
            if index == 0 and _looks_like_one_image(value):
                hint = (
                    '; "images" is a list of images and this looks like a single image: '
                    'send {"image": [...]}, or wrap it in a list'
                )
            raise InputError(f"image {index}: {exc.message}{hint}", exc.status) from None
    return batch


def _image(value: object) -> ModelInput:
    """One image -> (1, 28, 28, 1): its grid checked here, its values by to_model_input."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise InputError(_json_problem(value)) from None
    kind = array.dtype.kind
    if kind not in "iuf":
        raise InputError(_json_problem(value))
    if array.shape not in _IMAGE_SHAPES:
        raise InputError(
            f"expected 28x28 values (nested) or 784 (flat), got {_shape_text(array.shape)}; "
            f"{_HOW_SHAPE}"
        )
    grey_levels = kind != "f" and int(array.max()) > 1
    fix = _FIX_GREY if grey_levels else _FIX_FLOATS if kind == "f" else _FIX_BINARY
    return to_model_input(array[np.newaxis], grey_levels=grey_levels, fix=fix)


def _json_problem(value: object) -> str:
    """Why ``value`` is not a grid of numbers; only runs on the error path, so it may loop."""
    if not isinstance(value, list):
        return f"an image must be a list of numbers, got {_json_type(value)}; {_HOW_SHAPE}"
    pending: deque[tuple[list[Any], str, int]] = deque([(value, "", 1)])
    while pending:
        items, path, depth = pending.popleft()
        lists = [isinstance(item, list) for item in items]
        if any(lists) and not all(lists):
            where = lists.index(not lists[0])
            return (
                f"the image mixes lists and single values: {path}[0] is "
                f"{_json_type(items[0])} but {path}[{where}] is {_json_type(items[where])}; "
                f"{_HOW_SHAPE}"
            )
        if all(lists) and items:
            if depth >= 3:
                return f"the image is nested too deeply at {path}[0]; {_HOW_SHAPE}"
            lengths = [len(item) for item in items]
            if len(set(lengths)) > 1:
                short = next(i for i, n in enumerate(lengths) if n != lengths[0])
                return (
                    f"rows have different lengths: {path}[0] has {lengths[0]} values but "
                    f"{path}[{short}] has {lengths[short]}; {_HOW_SHAPE}"
                )
            pending.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items))
            continue
        for i, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, int | float):
                return f"the value at {path}[{i}] is {_json_type(item)}; {_HOW_VALUES}"
            if isinstance(item, int) and not -(2**63) <= item < 2**63:
                return f"the value at {path}[{i}] is {item}, far outside 0-255; {_HOW_VALUES}"
    return f"the values do not form a grid of numbers; {_HOW_SHAPE}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:20] + "..."
        return f'a string ("{shown}")'
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _looks_like_one_image(value: list[Any]) -> bool:
    """A flat list of 784 numbers, or 28 rows of 28 numbers: an image, not a list of them."""
    first = value[0]
    if len(value) == PIXELS:
        return isinstance(first, int | float)
    return (
        len(value) == SIDE
        and isinstance(first, list)
        and len(first) == SIDE
        and isinstance(first[0], int | float)
    )


def _shape_text(shape: tuple[int, ...]) -> str:
    return "a single number" if shape == () else f"shape {shape}"
