"""Turn what clients send into model input: float32 in [0, 1], white digit on black, 28x28.

Every function here is pure (no I/O, no global state) and raises
``service.errors.InputError`` with a 4xx status and a message that says how to fix the input.

JSON images
-----------
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

Raw tensors and .npy files
--------------------------
Shapes (N, 28, 28), (N, 28, 28, 1) or (N, 784). ``uint8`` holds grey levels 0-255;
``float32`` (and, in .npy files, ``float64``) holds values in [0, 1]. A .npy header is
checked (dtype, shape, byte count) before any array is made, object arrays (pickles) are
refused, and the pixels are read in place with ``np.frombuffer``.

Image files
-----------
PNG, JPEG, GIF (first frame), BMP and WebP are made MNIST-like the way MNIST itself was
made: EXIF orientation applied, transparency composited onto white, grey levels, polarity
detected (dark ink on light paper is inverted), uneven lighting and paper grey removed,
contrast stretched so the ink reaches 1, cropped to the ink, longest side scaled to 20 px,
and pasted into 28x28 with the centre of mass at (14, 14) (row, column index).
"""

from __future__ import annotations

import io
import math
import struct
from collections import deque
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageOps

from model_contract import IMAGE_SHAPE
from service.errors import InputError

F32 = npt.NDArray[np.float32]

SIDE: Final = IMAGE_SHAPE[0]
PIXELS: Final = SIDE * SIDE
DIGIT_BOX: Final = 20  # MNIST digits fill a 20x20 box inside the 28x28 field
CENTRE: Final = 14.0  # where MNIST puts the centre of mass (row and column index)
WORK_SIDE: Final = 1024  # bigger pictures are averaged down first: the digit ends up 20 px

_IMAGE_SHAPES: Final = ((SIDE, SIDE), (PIXELS,), (SIDE, SIDE, 1))
_BATCH_TAILS: Final = ((SIDE, SIDE), (PIXELS,), (SIDE, SIDE, 1))
_HOW_VALUES: Final = "send floats in [0, 1] or integer grey levels 0-255"
_HOW_SHAPE: Final = "send 28 rows of 28 numbers, or one flat list of 784"
_TENSOR_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "uint8": np.dtype("<u1"),
    "float32": np.dtype("<f4"),
}
_NPY_MAGIC: Final = b"\x93NUMPY"

# What Pillow holds once an image is decoded: 4,000,000 pixels of RGBA. A digit needs far
# fewer, and the pipeline's copies (composited, grey) take about as much again.
MAX_DECODED_BYTES: Final = 16_000_000
_BYTES_PER_PIXEL: Final = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_SOF: Final = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_ARITHMETIC_SOF: Final = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})

# Tuning of the image pipeline, in grey levels of [0, 1] unless said otherwise.
_FLAT_BORDER: Final = 0.03  # border spread (10th-90th percentile) below which lighting is even
_NOISE_FLOOR_SIGMAS: Final = 3.0  # background noise below this many sigmas is cut to black
_MIN_CONTRAST: Final = 0.04  # about 10 grey levels: less ink than this is a blank image
_INK_THRESHOLD: Final = 0.1  # of the stretched ink level: what counts for the bounding box
# Stroke width in pixels of the final 20 px box (2 * area / perimeter of the ink above 0.5).
# MNIST digits measure 1.0 (1st percentile), 1.8 (median); a pen on a phone photo ~0.6.
_THIN_STROKE: Final = 1.0
_STROKE: Final = 1.8


# --------------------------------------------------------------------------- JSON


def image_from_json(value: object) -> F32:
    """One image from parsed JSON (see the module docstring) -> float32 (28, 28) in [0, 1]."""
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
    if kind == "f":
        low, high = array.min(), array.max()
        if not (low >= 0.0 and high <= 1.0):  # NaN fails both comparisons
            raise InputError(_float_range_problem(array))
        return array.astype(np.float32).reshape(SIDE, SIDE)
    low, high = int(array.min()), int(array.max())
    if high > 1:
        if low < 0 or high > 255:
            bad = _first_index((array < 0) | (array > 255))
            raise InputError(
                f"integers are read as grey levels 0-255 (the largest is {high}), but the value "
                f"at {_path(bad)} is {array[bad].item()}; {_HOW_VALUES}"
            )
        grey = array.astype(np.float32).reshape(SIDE, SIDE)
        return np.divide(grey, np.float32(255.0), out=grey)
    if low < 0:
        bad = _first_index(array < 0)
        raise InputError(
            f"the value at {_path(bad)} is {array[bad].item()}, below 0; {_HOW_VALUES}"
        )
    return array.astype(np.float32).reshape(SIDE, SIDE)


def images_from_json(value: object, *, max_images: int) -> F32:
    """A list of images from parsed JSON -> float32 (N, 28, 28, 1); each image on its own rules."""
    if not isinstance(value, list):
        raise InputError(
            f'"images" must be a list of images, got {_json_type(value)}; '
            'for one image send {"image": [...]}'
        )
    if not value:
        raise InputError('"images" is empty: send at least one image')
    if len(value) > max_images:
        raise InputError(
            f"{len(value):,} images is more than the limit of {max_images:,} per request; "
            "split them over several requests",
            status=413,
        )
    batch = np.empty((len(value), SIDE, SIDE, 1), dtype=np.float32)
    for index, item in enumerate(value):
        try:
            batch[index, :, :, 0] = image_from_json(item)
        except InputError as exc:
            hint = ""
            if index == 0 and _looks_like_one_image(value):
                hint = (
                    '; "images" is a list of images and this looks like a single image: '
                    'send {"image": [...]}, or wrap it in a list'
                )
            raise InputError(f"image {index}: {exc.message}{hint}", exc.status) from None
    return batch


def _float_range_problem(array: npt.NDArray[Any]) -> str:
    finite = np.isfinite(array)
    if not finite.all():
        bad = _first_index(~finite)
        return (
            f"the value at {_path(bad)} is {array[bad].item()}: values must be finite "
            f"numbers; {_HOW_VALUES}"
        )
    bad = _first_index((array < 0) | (array > 1))
    return (
        f"the value at {_path(bad)} is {array[bad].item()}, outside [0, 1]: numbers with a decimal "
        "point are read as floats in [0, 1]; for grey levels 0-255 send integers, "
        "or divide by 255"
    )


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


def _path(index: tuple[int, ...]) -> str:
    """A position written the way it is reached in JSON: [row][column]."""
    return "".join(f"[{i}]" for i in index)


def _first_index(mask: npt.NDArray[np.bool_]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


# --------------------------------------------------------------------------- tensors


def images_from_tensor(data: bytes, dtype: str, shape: tuple[int, ...], *, max_images: int) -> F32:
    """A raw little-endian tensor body -> float32 (N, 28, 28, 1), read in place when float32.

    A float32 body is returned as a read-only view of ``data``: no copy is made.
    """
    wanted = _TENSOR_DTYPES.get(dtype)
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
    array = np.frombuffer(data, dtype=wanted).reshape(count, SIDE, SIDE, 1)
    return _scaled(array, dtype)


def images_from_npy(data: bytes, *, max_images: int) -> F32:
    """A .npy file (as written by ``np.save``) -> float32 (N, 28, 28, 1).

    The header is checked before any array is made, so a header that promises a huge
    array costs nothing; object arrays (which need pickle) are refused.
    """
    if not data.startswith(_NPY_MAGIC):
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
    array = array.reshape(shape, order="F" if fortran_order else "C").reshape(count, SIDE, SIDE, 1)
    return _scaled(array, str(dtype))


def _batch_size(shape: tuple[int, ...], max_images: int) -> int:
    if len(shape) < 2 or shape[1:] not in _BATCH_TAILS:
        raise InputError(
            f"shape {_dims_text(shape)} is not a batch of 28x28 images: "
            "use (N, 28, 28), (N, 28, 28, 1) or (N, 784)"
        )
    count = shape[0]
    if count < 1:
        raise InputError("the batch is empty (N = 0): send at least one image")
    if count > max_images:
        raise InputError(
            f"{count:,} images is more than the limit of {max_images:,} per request; "
            "split them over several requests",
            status=413,
        )
    return count


def _scaled(array: npt.NDArray[Any], dtype: str) -> F32:
    """uint8 -> /255; floats: checked to be finite and in [0, 1], converted only if needed."""
    if array.dtype.kind == "u":
        images = array.astype(np.float32)
        return np.divide(images, np.float32(255.0), out=images)
    low, high = array.min(), array.max()
    if not (low >= 0.0 and high <= 1.0):
        finite = np.isfinite(array)
        if not finite.all():
            image = _first_index(~finite)[0]
            raise InputError(
                f"image {image} has NaN or infinite values: send finite numbers in [0, 1]"
            )
        image = _first_index((array < 0) | (array > 1))[0]
        raise InputError(
            f"{dtype} values must lie in [0, 1], but image {image} has values in "
            f"[{float(array[image].min()):g}, {float(array[image].max()):g}]; "
            "send uint8 for grey levels 0-255, or divide by 255"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def _dims_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


# --------------------------------------------------------------------------- image files


_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
_OTHER_SIGNATURES: Final = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "Photoshop (PSD)"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
    (_NPY_MAGIC, "a .npy array (send it as application/x-npy)"),
)


def image_from_bytes(data: bytes, *, max_pixels: int, max_bytes: int = MAX_DECODED_BYTES) -> F32:
    """An encoded PNG, JPEG, GIF, BMP or WebP file -> float32 (28, 28), MNIST-like.

    The size in the file's header is checked against ``max_pixels`` (and Pillow's own
    decompression-bomb limit), and the memory its pixels will take against ``max_bytes``,
    before any pixel is decoded.
    """
    return image_from_opened(open_image(data, max_pixels=max_pixels, max_bytes=max_bytes))


def open_image(data: bytes, *, max_pixels: int, max_bytes: int) -> Image.Image:
    """Read only the header of an image file and check it; the pixels are not decoded yet.

    Big JPEGs are set to decode at reduced scale here, so that ``decoded_bytes`` tells what
    decoding will really take. The caller closes the image, or hands it to
    ``image_from_opened``.
    """
    image = _open(data, max_pixels)
    try:
        if image.format == "JPEG":
            _draft(image)
        needed = decoded_bytes(image)
        if needed > max_bytes:
            width, height = image.size
            raise InputError(
                f"the image is {width}x{height} in mode {image.mode}: decoding it takes "
                f"{needed:,} bytes, over the limit of {max_bytes:,} (MNIST_MAX_IMAGE_BYTES); "
                "scale it down (a digit needs only a few hundred pixels a side; 28x28 is "
                "what the model reads)",
                status=413,
            )
    except BaseException:
        image.close()
        raise
    return image


def image_from_opened(image: Image.Image) -> F32:
    """Decode an image ``open_image`` accepted -> float32 (28, 28), MNIST-like; closes it."""
    with image:
        grey = to_grayscale(_decoded(image))
    return mnistify(grey)


def decoded_bytes(image: Image.Image) -> int:
    """The bytes Pillow will hold for the pixels of ``image`` once decoded, from its header.

    Pillow stores 1-bit, L and P images in one byte a pixel, 16-bit ones in two, and every
    other mode (RGB included) in four.
    """
    width, height = image.size
    return width * height * _BYTES_PER_PIXEL.get(image.mode, 4)


def _check_jpeg_data(data: bytes, size: tuple[int, int]) -> None:
    """Refuse a JPEG whose header claims more pixels than its data can possibly hold.

    Pillow does not: libjpeg meets the end marker early, warns, and fills the rest with
    grey, so a 16x16 picture whose header says 6000x6000 decodes "fine" into 36 million
    invented pixels. With Huffman coding (baseline and progressive, nearly every JPEG)
    each 8x8 block of each component costs at least one bit for its DC coefficient, so
    fewer bits than blocks means the file is not what its header says. Arithmetic-coded
    files have no such floor and are not checked.
    """
    frame = _jpeg_frame(data)
    if frame is None or frame.marker in _ARITHMETIC_SOF:
        return
    blocks = frame.blocks()
    if len(data) * 8 < blocks:
        width, height = size
        raise InputError(
            f"this JPEG file is corrupt or truncated: its header says {width}x{height}, "
            f"which needs at least {math.ceil(blocks / 8):,} bytes of image data, but the "
            f"file has {len(data):,} bytes; send the complete file, with its real size",
            status=400,
        )


class _JpegFrame:
    """The start-of-frame segment of a JPEG: its kind, size and sampling per component."""

    def __init__(self, marker: int, segment: bytes) -> None:
        self.marker = marker
        self.height, self.width = struct.unpack(">HH", segment[1:5])
        count = segment[5]
        self.sampling = [
            (segment[6 + 3 * i + 1] >> 4, segment[6 + 3 * i + 1] & 0x0F) for i in range(count)
        ]

    def blocks(self) -> int:
        """How many 8x8 blocks the frame has, summed over its components."""
        if not self.sampling:
            return 0
        h_max = max(h for h, _ in self.sampling) or 1
        v_max = max(v for _, v in self.sampling) or 1
        return sum(
            math.ceil(math.ceil(self.width * h / h_max) / 8)
            * math.ceil(math.ceil(self.height * v / v_max) / 8)
            for h, v in self.sampling
        )


def _jpeg_frame(data: bytes) -> _JpegFrame | None:
    """The first start-of-frame segment, walking the markers before the image data."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill bytes may pad before a marker
            at += 1
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        segment = data[at + 4 : at + 2 + length]
        if marker in _SOF:
            return _JpegFrame(marker, segment) if len(segment) >= 6 + 3 * segment[5] else None
        if marker == 0xDA:  # start of scan: past the header, and no frame was found
            return None
        at += 2 + length
    return None


def _sniff(data: bytes) -> str:
    """The accepted format ``data`` claims to be, from its first bytes; 415 for anything else."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    seen = ""
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            seen = f" (this looks like {name})"
    if data[4:8] == b"ftyp":
        seen = " (this looks like HEIC/AVIF or a video)"
    elif data[:256].lstrip()[:1] == b"<":
        seen = " (this looks like SVG, XML or HTML)"
    raise InputError(
        f"not an image format we accept{seen}: send PNG, JPEG, GIF, BMP or WebP", status=415
    )


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InputError(
            "the image file is empty: send the bytes of a PNG, JPEG, GIF, BMP or WebP", 400
        )
    kind = _sniff(data)
    name = "WebP" if kind == "WEBP" else kind
    try:
        image = Image.open(io.BytesIO(data), formats=(kind,))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"the image is too large to decode safely ({exc}); scale it down", 413
        ) from None
    except Exception as exc:  # Pillow's header parsers raise many kinds on hostile bytes
        raise InputError(
            f"this {name} file is corrupt or truncated ({_reason(exc)}); send the complete file",
            status=400,
        ) from None
    width, height = image.size
    if kind == "JPEG":
        # Before the size limits: a file that cannot hold what its header says is corrupt,
        # whatever size it claims.
        try:
            _check_jpeg_data(data, image.size)
        except InputError:
            image.close()
            raise
    limit = (
        max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    )
    if width * height > limit:
        image.close()
        raise InputError(
            f"the image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{limit:,}; scale it down (a digit needs only a few hundred pixels a side)",
            status=413,
        )
    if width == 0 or height == 0:
        image.close()
        raise InputError(f"this {name} file declares an empty image ({width}x{height})", 400)
    return image


def _draft(image: Image.Image) -> None:
    """Have a big JPEG decode at reduced scale: the decoder skips detail we would average
    away anyway, much less work and memory."""
    if max(image.size) > 2 * WORK_SIDE:
        scale = WORK_SIDE / max(image.size)
        wanted = (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale))
        image.draft("L" if image.mode in ("L", "RGB") else None, wanted)


def _decoded(image: Image.Image) -> Image.Image:
    """Decode the first frame (big JPEGs as ``_draft`` set them), upright per its EXIF tag."""
    name = "WebP" if image.format == "WEBP" else image.format
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"the image is too large to decode safely ({exc}); scale it down", 413
        ) from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, EOFError...
        raise InputError(
            f"this {name} file is corrupt or truncated ({_reason(exc)}); send the complete file",
            status=400,
        ) from None
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in range(2, 9):
            return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not cost the picture: keep it as stored
        pass
    return image


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_grayscale(image: Image.Image) -> F32:
    """Any Pillow image -> float32 grey levels in [0, 1] (transparency composited on white).

    8-bit modes are divided by 255, 16-bit ('I;16*', 'I') by 65535, 'F' is taken as it is.
    Pictures larger than ``WORK_SIDE`` are box-averaged down (in C) before leaving Pillow.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        grey = np.asarray(image).astype(np.float32)
        if image.mode != "F":
            grey /= np.float32(65535.0)
            transparent = image.info.get("transparency")
            if isinstance(transparent, int):
                grey[np.asarray(image) == transparent] = 1.0
        return grey
    if image.has_transparency_data:
        # Transparent means "no ink": a canvas export with transparent paper lands on white.
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    if image.mode != "L":
        image = image.convert("L")
    factor = math.ceil(max(image.size) / WORK_SIDE)
    if factor > 1:
        image = image.reduce(factor)
    grey = np.asarray(image, dtype=np.float32)
    return np.multiply(grey, np.float32(1.0 / 255.0), out=grey)


# --------------------------------------------------------------------------- MNIST-like


def mnistify(gray: npt.ArrayLike) -> F32:
    """A grey picture of one digit (any size, either polarity, levels in [0, 1]) -> (28, 28).

    The result is white ink on black, the ink stretched to reach 1.0, the digit's longest
    side 20 px and its centre of mass at (14, 14): the way MNIST digits were made.
    """
    grey = np.asarray(gray, dtype=np.float32)
    if grey.ndim != 2 or grey.size == 0:
        raise InputError(f"expected a 2-D grey image, got shape {grey.shape}")
    if not np.isfinite(grey).all():
        raise InputError("the image has NaN or infinite grey levels")
    ink = _ink(_reduced(grey))
    field = _centred(_scaled_to_box(*_thickened(*_cropped(ink))))
    # Clipping only now keeps the centre of mass of an already MNIST-like digit where it was.
    np.minimum(field, 1.0, out=field)
    return field


def _reduced(grey: F32) -> F32:
    """Average blocks so that the longest side is at most WORK_SIDE (edges padded, not cut)."""
    factor = math.ceil(max(grey.shape) / WORK_SIDE)
    if factor <= 1:
        return grey
    height, width = grey.shape
    pad = ((0, -height % factor), (0, -width % factor))
    padded = np.pad(grey, pad, mode="edge")
    rows, cols = padded.shape[0] // factor, padded.shape[1] // factor
    blocks = padded.reshape(rows, factor, cols, factor)
    reduced: F32 = blocks.mean(axis=(1, 3), dtype=np.float32)
    return reduced


def _ink(grey: F32) -> F32:
    """Ink as bright values on a 0 background, scaled so that the ink core is at 1.0.

    Values above 1 (noise on the ink, or the brightest tenth of it) are left for the caller
    to clip at the very end.
    """
    border = _ring(grey)
    paper = _rank(border, 0.5)
    smooth = _box3(grey)
    darker, lighter = paper - float(smooth.min()), float(smooth.max()) - paper
    # Ink is whichever side strays further from the paper: dark on light gets inverted.
    if darker > lighter:
        ink, border = np.float32(paper) - grey, paper - border
    else:
        ink, border = grey - np.float32(paper), border - paper
    low, high = _ranks(border, 0.1, 0.9)
    if high - low > _FLAT_BORDER:
        ink -= _background(ink)
        border = _ring(ink)
    level = _rank(border, 0.5)
    sigma = 1.4826 * _rank(np.abs(border - level), 0.5)
    ink -= np.float32(level + _NOISE_FLOOR_SIGMAS * sigma)
    np.maximum(ink, 0.0, out=ink)
    contrast = float(_box3(ink).max())
    if contrast < max(_MIN_CONTRAST, _NOISE_FLOOR_SIGMAS * sigma):
        raise InputError(
            "the image is blank: no digit found; send a picture of one digit that stands out "
            "from its background"
        )
    strong = ink[ink > 0.5 * float(ink.max())]
    ink /= np.float32(_rank(strong, 0.9))  # division: the core lands exactly on 1.0
    return ink


def _rank(values: F32, q: float) -> float:
    """The q-quantile by rank (no interpolation): np.partition is much cheaper than median."""
    k = min(values.size - 1, int(q * values.size))
    return float(np.partition(values.ravel(), k)[k])


def _ranks(values: F32, low: float, high: float) -> tuple[float, float]:
    last = values.size - 1
    ks = (min(last, int(low * values.size)), min(last, int(high * values.size)))
    ordered = np.partition(values.ravel(), ks)
    return float(ordered[ks[0]]), float(ordered[ks[1]])


def _ring(image: F32) -> F32:
    """The pixels of a frame around the picture: about 5% of its shorter side, at least 1."""
    height, width = image.shape
    band = max(1, min(height, width) // 20)
    if height <= 2 * band or width <= 2 * band:
        return image.ravel()
    return np.concatenate(
        [
            image[:band].ravel(),
            image[-band:].ravel(),
            image[band:-band, :band].ravel(),
            image[band:-band, -band:].ravel(),
        ]
    )


def _box3(image: F32) -> F32:
    """3x3 means over the interior (the image itself when smaller): tells ink from specks."""
    if min(image.shape) < 3:
        return image
    rows = image[:-2] + image[1:-1] + image[2:]
    mean: F32 = (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) * np.float32(1.0 / 9.0)
    return mean


def _background(ink: F32) -> F32:
    """A smooth (quadratic) surface through the background of ``ink`` (ink is bright).

    Fitted to the lower quartile of blocks, rejecting blocks that ink covers: it follows
    the grey gradient and vignetting of a photo of paper, not the strokes.
    """
    height, width = ink.shape
    side = max(4, math.ceil(max(height, width) / 12))
    rows, cols = max(1, height // side), max(1, width // side)
    block_h, block_w = min(side, height), min(side, width)
    top, left = (height - rows * block_h) // 2, (width - cols * block_w) // 2
    blocks = ink[top : top + rows * block_h, left : left + cols * block_w]
    blocks = blocks.reshape(rows, block_h, cols, block_w).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(rows * cols, block_h * block_w)
    k = blocks.shape[1] // 4
    levels = np.partition(blocks, k, axis=1)[:, k].astype(np.float64)
    centre_v = (top + (np.arange(rows) + 0.5) * block_h) / (height / 2) - 1
    centre_u = (left + (np.arange(cols) + 0.5) * block_w) / (width / 2) - 1
    v, u = (a.ravel() for a in np.meshgrid(centre_v, centre_u, indexing="ij"))
    terms = 6 if levels.size >= 12 else 3 if levels.size >= 4 else 1
    design = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v][:terms], axis=1)
    keep = np.ones(levels.size, dtype=bool)
    coef = np.zeros(6)
    for _ in range(6):
        coef[:terms] = np.linalg.lstsq(design[keep], levels[keep], rcond=None)[0]
        residual = levels - design @ coef[:terms]
        spread = 1.4826 * float(np.median(np.abs(residual[keep])))
        again = residual <= max(2.5 * spread, 0.01)  # only ink (bright) blocks are outliers
        if again.sum() < terms or (again == keep).all():
            break
        keep = again
    u_full = (np.arange(width, dtype=np.float32) + 0.5) / np.float32(width / 2) - 1
    v_full = ((np.arange(height, dtype=np.float32) + 0.5) / np.float32(height / 2) - 1)[:, None]
    c = coef.astype(np.float32)
    surface = (c[0] + c[2] * v_full + c[5] * v_full * v_full) + (c[1] + c[4] * v_full) * u_full
    full: F32 = surface + c[3] * u_full * u_full
    return full


def _cropped(ink: F32) -> tuple[F32, int]:
    """The ink's bounding box, and its longest side: the length to scale to 20 px.

    Pixels with no inked neighbour (specks) do not count. The box is then widened over
    the faint rim just outside it (up to a tenth of its size), which MNIST digits have from
    anti-aliasing: cutting it off would move their centre of mass.
    """
    mask = ink > _INK_THRESHOLD
    height, width = mask.shape
    padded = np.zeros((height + 2, width + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    rows = padded[:-2] + padded[1:-1] + padded[2:]
    inked = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]  # the pixel and its 8 neighbours
    solid = mask & (inked >= 2)
    if solid.any():
        mask = solid
    rows_in = np.flatnonzero(mask.any(axis=1))
    cols_in = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows_in[0], rows_in[-1], cols_in[0], cols_in[-1]
    longest = int(max(bottom - top, right - left)) + 1
    rim = longest // 10
    any_ink = ink > 0
    rows_any = np.asarray(any_ink.any(axis=1), dtype=np.bool_)
    cols_any = np.asarray(any_ink.any(axis=0), dtype=np.bool_)
    top, bottom = _widened(rows_any, int(top), int(bottom), rim)
    left, right = _widened(cols_any, int(left), int(right), rim)
    return ink[top : bottom + 1, left : right + 1], longest


def _widened(inked: npt.NDArray[np.bool_], first: int, last: int, rim: int) -> tuple[int, int]:
    """Move ``first`` and ``last`` outwards over inked lines, at most ``rim`` lines each."""
    for _ in range(rim):
        if first == 0 or not inked[first - 1]:
            break
        first -= 1
    for _ in range(rim):
        if last == inked.size - 1 or not inked[last + 1]:
            break
        last += 1
    return first, last


def _thickened(digit: F32, longest: int) -> tuple[F32, int]:
    """Widen pen-thin strokes to MNIST's width: once scaled to 20 px they would fade to grey.

    Only digits that will be scaled down at least 3x are judged: at MNIST's own size the
    estimate is too coarse, and real MNIST digits must come through untouched.
    """
    if longest < 3 * DIGIT_BOX:
        return digit, longest
    mask = digit > 0.5
    edges = int(np.count_nonzero(mask[:, 1:] != mask[:, :-1]))
    edges += int(np.count_nonzero(mask[1:] != mask[:-1]))
    width = 2.0 * np.count_nonzero(mask) / max(edges, 1) * DIGIT_BOX / longest
    if width >= _THIN_STROKE:
        return digit, longest
    reach = round((_STROKE - width) * longest / DIGIT_BOX / 2)  # pixels added on each side
    if reach < 1:
        return digit, longest
    grown = np.pad(digit, reach)
    for axis in (0, 1):
        source = grown.copy()
        for shift in range(1, reach + 1):
            ahead = [slice(None), slice(None)]
            behind = [slice(None), slice(None)]
            ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
            np.maximum(grown[tuple(ahead)], source[tuple(behind)], out=grown[tuple(ahead)])
            np.maximum(grown[tuple(behind)], source[tuple(ahead)], out=grown[tuple(behind)])
    return grown, longest + 2 * reach


def _scaled_to_box(digit: F32, longest: int) -> F32:
    """Scale so that ``longest`` becomes 20 px, aspect kept: area averaging down, Lanczos up.

    The ink peak is brought up to at least 1.0.
    """
    if longest == DIGIT_BOX:
        return digit
    height, width = digit.shape
    factor = DIGIT_BOX / longest
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resample = Image.Resampling.BOX if factor < 1 else Image.Resampling.LANCZOS
    resized = Image.fromarray(np.ascontiguousarray(digit)).resize(size, resample)
    scaled = np.maximum(np.asarray(resized, dtype=np.float32), 0.0)  # Lanczos undershoots
    peak = float(scaled.max())
    if 0.0 < peak < 1.0:
        # Strokes thinner than a pixel at this scale come out grey: MNIST ink is saturated.
        scaled /= np.float32(peak)
    return scaled


def _centred(digit: F32) -> F32:
    """Paste into 28x28 with the centre of mass at (14, 14), shifted by whole pixels."""
    height, width = digit.shape
    if height > SIDE or width > SIDE:  # only a wide faint rim could do it: trim it evenly
        top, left = max(0, (height - SIDE) // 2), max(0, (width - SIDE) // 2)
        digit = digit[top : top + SIDE, left : left + SIDE]
        height, width = digit.shape
    mass = float(digit.sum())
    row = float(digit.sum(axis=1) @ np.arange(height)) / mass
    col = float(digit.sum(axis=0) @ np.arange(width)) / mass
    top = min(max(math.floor(CENTRE - row + 0.5), 0), SIDE - height)
    left = min(max(math.floor(CENTRE - col + 0.5), 0), SIDE - width)
    field = np.zeros((SIDE, SIDE), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return field
