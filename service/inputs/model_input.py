"""The one rule every input path ends in: N images -> the model's float32 (N, 28, 28, 1).

/predict's JSON arrays, raw tensors and .npy files, and the Open Inference Protocol's
tensors over REST and gRPC all finish here, so a request is held to the same limits and
its values to the same ranges whatever it was sent as: how many images one request may
carry, grey levels 0-255 divided by 255, floats in [0, 1] and finite.
"""

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from model_contract import IMAGE_SHAPE
from service.errors import InputError

ModelInput = npt.NDArray[np.float32]  # (N, 28, 28, 1), values in [0, 1]

SIDE: Final = IMAGE_SHAPE[0]
PIXELS: Final = SIDE * SIDE


def check_count(count: int, max_images: int) -> int:
    """``count`` images, refused when none (422) or more than a request may carry (413)."""
    if count < 1:
        raise InputError("the batch is empty (N = 0): send at least 1 image")
    if count > max_images:
        raise InputError(
            f"{count:,} images is more than the limit of {max_images:,} per request "
            "(MNIST_MAX_IMAGES_PER_REQUEST); split them over several requests",
            status=413,
        )
    return count


def to_model_input(values: npt.NDArray[Any], *, grey_levels: bool, fix: str) -> ModelInput:
    """N images' values, shaped (N, ...) with 784 each in C order -> the model's input.

    With ``grey_levels`` the values are integers 0-255, divided by 255; otherwise they are
    numbers in [0, 1], kept as they are (C-ordered float32 values without a copy). One min/max pass
    checks them all, NaN included; only a failure searches for the culprit, whose position
    the message gives, ending with ``fix``: how the client sends it right.
    """
    count = values.shape[0]
    if grey_levels:
        if values.dtype != np.uint8:
            _check_range(values, 0, 255, "outside the grey levels 0-255", fix)
        images = values.astype(np.float32, order="C")
        np.divide(images, np.float32(255.0), out=images)
    else:
        _check_range(values, 0, 1, "outside [0, 1]", fix)
        images = np.ascontiguousarray(values, dtype=np.float32)
    return images.reshape(count, *IMAGE_SHAPE)


def _check_range(values: npt.NDArray[Any], low: float, high: float, outside: str, fix: str) -> None:
    if values.size == 0 or (values.min() >= low and values.max() <= high):
        return  # NaN fails both comparisons: it is found below
    if values.dtype.kind == "f" and not (finite := np.isfinite(values)).all():
        bad = _first_index(~finite)
        raise InputError(
            f"{_where(values, bad)} is {values[bad].item()}: values must be finite numbers "
            f"(no NaN or infinity); {fix}"
        )
    bad = _first_index((values < low) | (values > high))
    raise InputError(f"{_where(values, bad)} is {values[bad].item()}, {outside}; {fix}")


def _where(values: npt.NDArray[Any], index: tuple[int, ...]) -> str:
    """``image 3: the value at [4][5]``, the image left out when there is only one."""
    image, position = index[0], "".join(f"[{i}]" for i in index[1:])
    at = f"the value at {position}" if position else "the value"
    return at if values.shape[0] == 1 else f"image {image}: {at}"


def _first_index(mask: npt.NDArray[np.bool_]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))
