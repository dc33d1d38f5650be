"""Raw tensors (application/octet-stream) and .npy files (application/x-npy).

Shapes (N, 28, 28), (N, 28, 28, 1) or (N, 784). ``uint8`` holds grey levels 0-255;
``float32`` (and, in .npy files, ``float64``) holds values in [0, 1]. A .npy header is
checked (dtype, shape, byte count) before any array is made, object arrays (pickles) are
refused, and the pixels are read in place with ``np.frombuffer``.
"""

import io
import re
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from service.errors import InputError
from service.inputs.model_input import PIXELS, SIDE, ModelInput, check_count, to_model_input

TENSOR_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "uint8": np.dtype("<u1"),
    "float32": np.dtype("<f4"),
}
SHAPE_PATTERN: Final = r"^[0-9]+(,[0-9]+)*$"
NPY_MAGIC: Final = b"\x93NUMPY"
_BATCH_TAILS: Final = ((SIDE, SIDE), (PIXELS,), (SIDE, SIDE, 1))
_FIX: Final = "send uint8 for grey levels 0-255, or divide by 255"


def tensor_description(
    dtype: str | None, shape: str | None
) -> tuple[str | None, tuple[int, ...] | None]:
    """The ``dtype`` and ``shape`` query parameters of a raw tensor, checked whatever the body:
    a parameter the API declares is either valid or refused, never ignored."""
    if dtype is not None and dtype not in TENSOR_DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {', '.join(TENSOR_DTYPES)}")
    if shape is None:
        return dtype, None
    if not re.fullmatch(SHAPE_PATTERN, shape):
        raise InputError(
            f"shape {shape!r} is not a comma-separated list of integers, e.g. 256,28,28", 400
        )
    return dtype, tuple(int(d) for d in shape.split(","))


def images_from_tensor(
    data: bytes, dtype: str, shape: tuple[int, ...], *, max_images: int
) -> ModelInput:
    """A raw little-endian tensor body -> float32 (N, 28, 28, 1), read in place when float32.

    A float32 body is returned as a read-only view of ``data``: no copy is made.
    """
    wanted = TENSOR_DTYPES.get(dtype)
    if wanted is None:
        raise InputError(
            f"dtype {dtype!r} is not supported: use uint8 (grey levels 0-255) "
            "or float32 (values in [0, 1])"
        )
    count = _batch_size(tuple(shape), max_images)
    needed = count * PIXELS * wanted.itemsize
    if len(data) != needed:
        raise InputError(
            f"the body has {len(data):,} bytes but dtype {dtype} and shape "
            f"{_dims_text(shape)} need {needed:,}; send exactly the tensor's bytes "
            "(little-endian, C order)",
            status=400,
        )
    return _scaled(np.frombuffer(data, dtype=wanted).reshape(shape))


def images_from_npy(data: bytes, *, max_images: int) -> ModelInput:
    """A .npy file (as written by ``np.save``) -> float32 (N, 28, 28, 1).

    The header is checked before any array is made, so a header that promises a huge
    array costs nothing; object arrays (which need pickle) are refused.
    """
    if not data.startswith(NPY_MAGIC):
        raise InputError(
            "the body is not a .npy file (it must start with \\x93NUMPY, as np.save writes it)",
            status=400,
        )
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InputError(
                f".npy format version {version[0]}.{version[1]} is not supported: "
                "save with np.save (versions 1.0 and 2.0)",
                status=400,
            )
    except ValueError as exc:
        raise InputError(f"the .npy header is malformed ({exc}); save with np.save", 400) from None
    if dtype.hasobject:
        raise InputError(
            "the .npy file holds Python objects (dtype object), which would need pickle: "
            "refused; save a numeric array (uint8, float32 or float64)"
        )
    if not (dtype.kind == "u" and dtype.itemsize == 1) and not (
        dtype.kind == "f" and dtype.itemsize in (4, 8)
    ):
        raise InputError(
            f"the .npy dtype {dtype} is not supported: use uint8 (grey levels 0-255) or "
            "float32/float64 (values in [0, 1])"
        )
    count = _batch_size(tuple(shape), max_images)
    offset = stream.tell()
    needed = count * PIXELS * dtype.itemsize
    if len(data) - offset != needed:
        raise InputError(
            f"the .npy file is {'truncated' if len(data) - offset < needed else 'too long'}: "
            f"its header promises {needed:,} bytes of {dtype} with shape {_dims_text(shape)} "
            f"but {len(data) - offset:,} follow; save it again with np.save",
            status=400,
        )
    array = np.frombuffer(data, dtype=dtype, count=count * PIXELS, offset=offset)
    return _scaled(array.reshape(shape, order="F" if fortran_order else "C"))


def _batch_size(shape: tuple[int, ...], max_images: int) -> int:
    if len(shape) < 2 or shape[1:] not in _BATCH_TAILS:
        raise InputError(
            f"shape {_dims_text(shape)} is not a batch of 28x28 images: "
            "use (N, 28, 28), (N, 28, 28, 1) or (N, 784)"
        )
    return check_count(shape[0], max_images)


def _scaled(array: npt.NDArray[Any]) -> ModelInput:
    """uint8 is grey levels, floats are [0, 1]: a .npy float64 is converted, float32 is not."""
    return to_model_input(array, grey_levels=array.dtype.kind == "u", fix=_FIX)


def _dims_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
