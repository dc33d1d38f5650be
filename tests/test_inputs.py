"""service.inputs: JSON, tensor and .npy bodies, and image files made MNIST-like.

Pure functions, no server. Image tests use real MNIST test digits, rendered the way people
really send digits (inverted, on a transparent canvas, in a phone photo...).
"""

from __future__ import annotations

import io
import math
import struct
import timeit
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
from PIL import Image, ImageFile, ImageFilter

from service.errors import InputError
from service.inputs.image_files import decoded_bytes, image_from_bytes, open_image, to_grayscale
from service.inputs.json_arrays import image_from_json, images_from_json
from service.inputs.mnist_like import mnistify
from service.inputs.tensors import images_from_npy, images_from_tensor
from tests.digits import blank_png, lying_jpeg
from training.data import RawSplit

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
Floats = npt.NDArray[np.floating[Any]]
MAX_PIXELS = 40_000_000


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def digits(mnist_test_digits: RawSplit) -> list[U8]:
    """One real test digit of each class 0-9 (the first of each in the official test set)."""
    labels = mnist_test_digits.labels
    return [mnist_test_digits.images[int(np.flatnonzero(labels == k)[0])] for k in range(10)]


def as_json(value: Any) -> Any:
    """What the service's orjson.loads gives for ``value``."""
    return orjson.loads(orjson.dumps(value))


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def fails(call: Callable[[], object], status: int, *fragments: str) -> str:
    """Run ``call``, expect an InputError with ``status`` whose message holds ``fragments``."""
    with pytest.raises(InputError) as caught:
        call()
    assert caught.value.status == status, caught.value.message
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value.message


def centre_of_mass(image: Floats) -> tuple[float, float]:
    mass = float(image.sum())
    rows, cols = np.arange(image.shape[0]), np.arange(image.shape[1])
    return float(image.sum(axis=1) @ rows) / mass, float(image.sum(axis=0) @ cols) / mass


def box_side(image: Floats, threshold: float = 0.1) -> int:
    """Longest side of the bounding box of the pixels above ``threshold``."""
    rows = np.flatnonzero((image > threshold).any(axis=1))
    cols = np.flatnonzero((image > threshold).any(axis=0))
    return int(max(rows[-1] - rows[0], cols[-1] - cols[0])) + 1


def correlation(a: Floats, b: Floats) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def aligned_correlation(result: Floats, original: Floats) -> float:
    """Pearson r at the best whole-pixel offset within 1 px.

    MNIST placed each digit by rounding its centre of mass to a whole pixel, so a
    re-rendered digit may land one pixel away and still be centred just as well.
    """
    return max(
        correlation(np.roll(result, (dy, dx), axis=(0, 1)), original)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


def dilated(mask: npt.NDArray[np.bool_], steps: int) -> npt.NDArray[np.bool_]:
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = np.zeros_like(mask)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                mask |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return mask


def stroke_width(image: Floats) -> float:
    """2 x area / perimeter of the ink above 0.5, in pixels."""
    mask = image > 0.5
    edges = np.count_nonzero(mask[:, 1:] != mask[:, :-1]) + np.count_nonzero(mask[1:] != mask[:-1])
    return 2.0 * np.count_nonzero(mask) / edges


# --------------------------------------------------------------------------- renderings


def digit_box(digit: U8) -> U8:
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def resized_digit(digit: U8, height: int) -> Image.Image:
    """The digit's bounding box scaled to ``height`` pixels (white on black, mode L)."""
    box = digit_box(digit)
    factor = height / box.shape[0]
    width = max(1, round(box.shape[1] * factor))
    resample = Image.Resampling.BICUBIC if factor > 1 else Image.Resampling.BOX
    return Image.fromarray(box).resize((width, height), resample)


def inverted(digit: U8) -> bytes:
    """Black ink on white paper, 28x28."""
    return encode(Image.fromarray(255 - digit), "PNG")


def transparent_canvas(digit: U8) -> bytes:
    """A drawing app's export: black strokes, the ink only in alpha, transparent paper."""
    alpha = Image.fromarray(digit).resize((280, 280), Image.Resampling.BICUBIC)
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    rgba[..., 3] = np.asarray(alpha)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def off_centre(digit: U8) -> bytes:
    """A 90 px digit near the top-right corner of a 400x300 black canvas."""
    canvas = Image.new("L", (400, 300), 0)
    small = resized_digit(digit, 90)
    canvas.paste(small, (390 - small.width, 20))
    return encode(canvas, "PNG")


def tiny(digit: U8) -> bytes:
    """A dark digit 8 px tall on a 200x200 white canvas."""
    canvas = Image.new("L", (200, 200), 255)
    small = np.asarray(resized_digit(digit, 8))
    canvas.paste(Image.fromarray(255 - small), (30, 150))
    return encode(canvas, "PNG")


def huge(digit: U8) -> bytes:
    """The digit 1000 px tall."""
    big = resized_digit(digit, 1000)
    canvas = Image.new("L", (big.width + 200, 1200), 0)
    canvas.paste(big, (100, 100))
    return encode(canvas, "PNG")


def paper(height: int, width: int) -> F32:
    """Grey, unevenly lit paper: a sideways gradient and darker corners."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    corners = ((cols - width / 2) / width) ** 2 + ((rows - height / 2) / height) ** 2
    grey: F32 = 0.62 + 0.25 * cols / width + 0.08 * rows / height - 0.12 * corners
    return grey


def photo(grey: Floats, seed: int, tint: bool = True) -> bytes:
    """A phone camera's JPEG: sensor noise, a warm tint on colour."""
    noisy = grey + np.random.default_rng(seed).normal(0.0, 0.02, grey.shape)
    channels = (1.0, 0.96, 0.88) if tint else (1.0, 1.0, 1.0)
    rgb = np.stack([noisy * c for c in channels], axis=-1)
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
    return encode(image, "JPEG", quality=85)


def phone_photo(digit: U8) -> bytes:
    """Dark ink, 300 px tall, on grey uneven paper, photographed (RGB JPEG)."""
    big = np.asarray(resized_digit(digit, 300), dtype=np.float32) / 255
    width = max(640, big.shape[1] + 250)
    ink = np.zeros((480, width), dtype=np.float32)
    ink[90 : 90 + big.shape[0], 200 : 200 + big.shape[1]] = big
    return photo(paper(480, width) * (1 - 0.8 * ink), seed=int(digit.sum()))


def pen_photo(digit: U8) -> bytes:
    """Like phone_photo, but written with a thin pen: strokes about 3% of the height."""
    thin = resized_digit(digit, 100).filter(ImageFilter.MinFilter(7))
    big = thin.resize((thin.width * 3, 300), Image.Resampling.BICUBIC)
    strokes = np.asarray(big, dtype=np.float32) / 255
    width = max(640, strokes.shape[1] + 250)
    ink = np.zeros((480, width), dtype=np.float32)
    ink[90 : 90 + strokes.shape[0], 200 : 200 + strokes.shape[1]] = strokes
    return photo(paper(480, width) * (1 - 0.7 * ink), seed=int(digit.sum()), tint=False)


def light_in_dark_picture(digit: U8) -> bytes:
    """A small (48 px) light digit low in a big, dark, slightly textured 800x600 picture."""
    rows, cols = np.mgrid[0:600, 0:800].astype(np.float32)
    scene = 0.12 + 0.04 * np.sin(cols / 40) * np.cos(rows / 55)
    scene += np.random.default_rng(int(digit.sum())).normal(0.0, 0.01, scene.shape)
    small = np.asarray(resized_digit(digit, 48), dtype=np.float32) / 255
    scene[400 : 400 + small.shape[0], 120 : 120 + small.shape[1]] += 0.7 * small
    return encode(Image.fromarray((np.clip(scene, 0, 1) * 255).astype(np.uint8)), "PNG")


# --------------------------------------------------------------------------- JSON values


def test_json_floats_are_taken_as_they_are(digits: list[U8]) -> None:
    floats = digits[3] / 255.0
    result = image_from_json(as_json(floats.tolist()))
    assert result.dtype == np.float32
    assert result.shape == (28, 28)
    np.testing.assert_array_equal(result, floats.astype(np.float32))


def test_json_integers_above_1_are_grey_levels(digits: list[U8]) -> None:
    result = image_from_json(as_json(digits[5].tolist()))
    np.testing.assert_array_equal(result, digits[5].astype(np.float32) / np.float32(255))
    assert result.max() == pytest.approx(digits[5].max() / 255)


def test_json_integers_0_and_1_are_a_binary_image() -> None:
    binary = np.zeros((28, 28), dtype=int)
    binary[4:24, 12:16] = 1
    result = image_from_json(as_json(binary.tolist()))
    np.testing.assert_array_equal(result, binary.astype(np.float32))


def test_json_float_ones_and_zeros_stay_floats() -> None:
    assert image_from_json([[1.0] * 28] * 28).max() == 1.0


def test_json_flat_784_equals_nested_and_28x28x1_is_accepted(digits: list[U8]) -> None:
    nested = image_from_json(as_json(digits[7].tolist()))
    flat = image_from_json(as_json(digits[7].ravel().tolist()))
    channel = image_from_json(as_json(digits[7][:, :, None].tolist()))
    np.testing.assert_array_equal(nested, flat)
    np.testing.assert_array_equal(nested, channel)


def test_json_batch_reads_each_image_on_its_own_rules(digits: list[U8]) -> None:
    grey_levels = digits[0].tolist()  # integers up to 255
    floats = (digits[1] / 255.0).tolist()
    binary = (digits[2] > 127).astype(int).ravel().tolist()  # integers 0/1, flat
    batch = images_from_json(as_json([grey_levels, floats, binary]), max_images=3)
    assert batch.dtype == np.float32
    assert batch.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(batch[0, :, :, 0], digits[0] / np.float32(255))
    np.testing.assert_allclose(batch[1, :, :, 0], digits[1] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(batch[2, :, :, 0], (digits[2] > 127).astype(np.float32))


_ROW = [0] * 28


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        pytest.param(
            [_ROW] * 5 + [[0] * 27] + [_ROW] * 22,
            ["rows have different lengths", "[5] has 27"],
            id="ragged",
        ),
        pytest.param([_ROW] * 27, ["got shape (27, 28)"], id="27-rows"),
        pytest.param([[0] * 27] * 28, ["got shape (28, 27)"], id="27-columns"),
        pytest.param([0] * 783, ["got shape (783,)"], id="flat-783"),
        pytest.param([[[0, 0]] * 28] * 28, ["got shape (28, 28, 2)"], id="two-channels"),
        pytest.param(
            [_ROW] * 3 + [[0] * 27 + ["x"]] + [_ROW] * 24,
            ['[3][27] is a string ("x")'],
            id="string",
        ),
        pytest.param([[True] * 28] * 28, ["[0][0] is a boolean (true)"], id="booleans"),
        pytest.param([_ROW] * 2 + [[None] + [0] * 27] + [_ROW] * 25, ["[2][0] is null"], id="null"),
        pytest.param(
            [_ROW] * 27 + [[0.5] * 27 + [float("nan")]], ["[27][27] is nan", "finite"], id="nan"
        ),
        pytest.param([0.0] * 783 + [float("inf")], ["[783] is inf", "finite"], id="infinity"),
        pytest.param(
            [[255.0] * 28] * 28, ["is 255.0, outside [0, 1]", "send integers"], id="float-255"
        ),
        pytest.param(
            [[-0.1] + [0.0] * 27] + [[0.0] * 28] * 27,
            ["is -0.1, outside [0, 1]"],
            id="negative-float",
        ),
        pytest.param(
            [[256] + [0] * 27] + [_ROW] * 27, ["grey levels 0-255", "is 256"], id="int-256"
        ),
        pytest.param(
            [[-1, 255] + [0] * 26] + [_ROW] * 27, ["grey levels 0-255", "is -1"], id="negative-int"
        ),
        pytest.param(
            [[-1, 1] + [0] * 26] + [_ROW] * 27, ["is -1, outside [0, 1]"], id="negative-binary"
        ),
        pytest.param({"pixels": []}, ["got an object"], id="object"),
        pytest.param(0.5, ["got a single number"], id="number"),
        pytest.param("0" * 784, ["got a string"], id="string-image"),
        pytest.param(None, ["got null"], id="null-image"),
        pytest.param([], ["got shape (0,)"], id="empty"),
        pytest.param([_ROW] * 27 + [0], ["mixes lists and single values"], id="row-is-number"),
        pytest.param(
            [2**70] + [0] * 783, ["[0] is 1180591620717411303424, far outside"], id="huge-int"
        ),
    ],
)
def test_json_bad_image_is_422_with_a_fix(value: object, fragments: list[str]) -> None:
    message = fails(lambda: image_from_json(value), 422, *fragments)
    assert "send" in message  # every message says how to fix it


def test_json_batch_must_be_a_non_empty_list() -> None:
    fails(lambda: images_from_json({"image": []}, max_images=4), 422, "must be a list")
    fails(lambda: images_from_json([], max_images=4), 422, "empty")


def test_json_batch_over_the_limit_is_413() -> None:
    images = [[0] * 784] * 5
    fails(lambda: images_from_json(images, max_images=4), 413, "5 images", "limit of 4")
    assert images_from_json(images, max_images=5).shape == (5, 28, 28, 1)


def test_json_batch_names_the_bad_image() -> None:
    images = [[0] * 784, [0] * 784, [0] * 700]
    fails(lambda: images_from_json(images, max_images=4), 422, "image 2: ", "got shape (700,)")


def test_json_batch_that_is_one_image_says_so(digits: list[U8]) -> None:
    one = as_json(digits[4].tolist())
    fails(lambda: images_from_json(one, max_images=1024), 422, "image 0: ", 'send {"image"')


def test_json_batch_of_28_images_gets_no_single_image_hint(digits: list[U8]) -> None:
    images = [as_json(digits[1].tolist())] * 28
    images[0] = [[0.5] * 28] * 27 + [[0.5] * 27 + [2.0]]
    message = fails(lambda: images_from_json(images, max_images=28), 422, "image 0: ")
    assert "single image" not in message


def test_json_conversion_costs_little_more_than_np_asarray(digits: list[U8]) -> None:
    """Guard against per-value Python loops: next to np.asarray, the checks must be cheap.

    Measured against np.asarray on the same machine, interleaved, best of many rounds, so
    a busy machine slows both alike. About 1.2-1.5x here; a loop over the 784 values would
    add at least as much again. Absolute figures (about 30 us per image) are in the report.
    """
    for value in (as_json(digits[8].tolist()), as_json((digits[8] / 255.0).ravel().tolist())):
        baseline, ours = math.inf, math.inf
        for _ in range(15):
            baseline = min(baseline, timeit.timeit(lambda: np.asarray(value), number=100))  # noqa: B023
            ours = min(ours, timeit.timeit(lambda: image_from_json(value), number=100))  # noqa: B023
        assert ours < 2.5 * baseline, f"{ours / baseline:.2f}x np.asarray"


# --------------------------------------------------------------------------- raw tensors


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 28, 28, 1), (3, 784)])
def test_tensor_uint8_in_any_accepted_shape(digits: list[U8], shape: tuple[int, ...]) -> None:
    stack = np.stack(digits[:3])
    result = images_from_tensor(stack.reshape(shape).tobytes(), "uint8", shape, max_images=3)
    assert result.dtype == np.float32
    assert result.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(result[..., 0], stack / np.float32(255))


def test_tensor_float32_is_read_in_place(digits: list[U8]) -> None:
    stack = (np.stack(digits[:2]) / 255.0).astype("<f4")
    data = stack.tobytes()
    result = images_from_tensor(data, "float32", (2, 784), max_images=2)
    np.testing.assert_array_equal(result[..., 0], stack)
    assert np.shares_memory(result, np.frombuffer(data, dtype=np.uint8))  # no copy
    assert not result.flags.writeable


@pytest.mark.parametrize(
    ("body", "dtype", "shape", "status", "fragment"),
    [
        pytest.param(bytes(783), "uint8", (1, 28, 28), 400, "783 bytes", id="short"),
        pytest.param(bytes(785), "uint8", (1, 784), 400, "need 784", id="long"),
        pytest.param(bytes(784), "float32", (1, 784), 400, "need 3,136", id="float32-short"),
        pytest.param(bytes(784), "int8", (1, 784), 422, "'int8' is not supported", id="dtype"),
        pytest.param(bytes(784), "uint8", (1, 27, 29), 422, "(1, 27, 29)", id="shape"),
        pytest.param(bytes(784), "uint8", (784,), 422, "not a batch", id="no-batch-axis"),
        pytest.param(b"", "uint8", (0, 784), 422, "empty", id="zero-images"),
        pytest.param(bytes(5 * 784), "uint8", (5, 784), 413, "limit of 4", id="too-many"),
        pytest.param(
            np.full(784, 2.0, "<f4").tobytes(), "float32", (1, 784), 422, "[0, 1]", id="range"
        ),
        pytest.param(
            np.full(784, np.nan, "<f4").tobytes(), "float32", (1, 784), 422, "finite", id="nan"
        ),
    ],
)
def test_tensor_bad_body(
    body: bytes, dtype: str, shape: tuple[int, ...], status: int, fragment: str
) -> None:
    fails(lambda: images_from_tensor(body, dtype, shape, max_images=4), status, fragment)


# --------------------------------------------------------------------------- .npy files


def npy(array: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """Just the header of a .npy file (magic included) describing ``shape``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s: s, id="uint8"),
        pytest.param(lambda s: (s / 255.0).astype(np.float32), id="float32"),
        pytest.param(lambda s: s / 255.0, id="float64"),
        pytest.param(lambda s: (s / 255.0).astype(">f4"), id="big-endian"),
        pytest.param(lambda s: np.asfortranarray(s / 255.0), id="fortran-order"),
        pytest.param(lambda s: s.reshape(len(s), 784), id="flat"),
        pytest.param(lambda s: s[..., None], id="channel"),
    ],
)
def test_npy_accepted_dtypes_and_layouts(
    digits: list[U8], make: Callable[[U8], npt.NDArray[Any]]
) -> None:
    stack = np.stack(digits[:4])
    result = images_from_npy(npy(make(stack)), max_images=4)
    assert result.dtype == np.float32
    assert result.shape == (4, 28, 28, 1)
    assert result.flags.c_contiguous
    np.testing.assert_allclose(result[..., 0], stack / 255.0, atol=1e-7)


def test_npy_object_array_is_refused_without_unpickling() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([None] * 784, dtype=object).reshape(1, 784), allow_pickle=True)
    fails(lambda: images_from_npy(buffer.getvalue(), max_images=4), 422, "pickle", "refused")


@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        pytest.param(b"not an array at all", 400, "not a .npy file", id="not-npy"),
        pytest.param(npy(np.zeros((2, 784), np.uint8))[:-1], 400, "truncated", id="truncated"),
        pytest.param(npy(np.zeros((1, 784), np.uint8)) + b"\0", 400, "too long", id="trailing"),
        pytest.param(b"\x93NUMPY\x01\x00\x10\x00{'descr': '|u1'", 400, "malformed", id="header"),
        pytest.param(npy(np.zeros((1, 784), np.int32)), 422, "int32 is not supported", id="int32"),
        pytest.param(npy(np.zeros((1, 784), np.complex64)), 422, "not supported", id="complex"),
        pytest.param(npy(np.zeros((1, 28, 27), np.uint8)), 422, "(1, 28, 27)", id="shape"),
        pytest.param(npy(np.zeros((5, 784), np.uint8)), 413, "limit of 4", id="too-many"),
        pytest.param(npy(np.full((1, 784), 1.5)), 422, "[0, 1]", id="range"),
    ],
)
def test_npy_bad_file(data: bytes, status: int, fragment: str) -> None:
    fails(lambda: images_from_npy(data, max_images=4), status, fragment)


def test_npy_header_promising_a_huge_array_is_refused_before_reading() -> None:
    # A billion images in the header and none in the body: no array is ever made.
    huge_header = npy_header((1_000_000_000, 784))
    fails(lambda: images_from_npy(huge_header, max_images=10**10), 400, "truncated")
    fails(lambda: images_from_npy(huge_header, max_images=1024), 413, "limit of 1,024")


# --------------------------------------------------------------------------- image files


def test_real_mnist_digits_as_png_come_back_unchanged(mnist_test_digits: RawSplit) -> None:
    """200 official test digits through PNG: the pipeline must not distort MNIST itself."""
    errors = []
    for digit in mnist_test_digits.images[:200]:
        result = image_from_bytes(encode(Image.fromarray(digit), "PNG"), max_pixels=MAX_PIXELS)
        original = digit / np.float32(255)
        errors.append(float(np.abs(result - original).mean()))
        assert centre_of_mass(result) == pytest.approx(centre_of_mass(original), abs=0.05)
        assert box_side(result) == box_side(original)
    assert max(errors) < 0.01, f"worst digit differs by {max(errors):.4f} on average"
    assert np.mean(errors) < 0.002


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [
        pytest.param("PNG", {}, 0.01, id="png"),
        pytest.param("BMP", {}, 0.01, id="bmp"),
        pytest.param("GIF", {}, 0.01, id="gif"),
        pytest.param("WEBP", {"lossless": True}, 0.01, id="webp-lossless"),
        pytest.param("WEBP", {"quality": 90}, 0.03, id="webp"),
        pytest.param("JPEG", {"quality": 95}, 0.03, id="jpeg"),
    ],
)
def test_formats_round_trip(
    digits: list[U8], fmt: str, options: dict[str, Any], tolerance: float
) -> None:
    errors = [
        np.abs(
            image_from_bytes(encode(Image.fromarray(d), fmt, **options), max_pixels=MAX_PIXELS)
            - d / 255.0
        ).mean()
        for d in digits
    ]
    assert np.mean(errors) < tolerance, errors


VARIANTS: dict[str, Callable[[U8], bytes]] = {
    "inverted": inverted,
    "transparent-canvas": transparent_canvas,
    "off-centre": off_centre,
    "tiny": tiny,
    "huge": huge,
    "phone-photo": phone_photo,
    "pen-photo": pen_photo,
    "light-in-dark-picture": light_in_dark_picture,
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_real_world_renderings_come_out_mnist_like(digits: list[U8], variant: str) -> None:
    """Centred by mass, 20 px box, clean black background, and the same digit."""
    scores = []
    for label, digit in enumerate(digits):
        result = image_from_bytes(VARIANTS[variant](digit), max_pixels=MAX_PIXELS)
        original = digit / np.float32(255)
        where = f"{variant}, digit {label}"
        assert result.dtype == np.float32
        assert result.shape == (28, 28)
        assert result.min() >= 0.0, where
        assert result.max() == 1.0, where
        row, col = centre_of_mass(result)
        assert abs(row - 14) <= 1, f"{where}: centre row {row:.2f}"
        assert abs(col - 14) <= 1, f"{where}: centre column {col:.2f}"
        assert box_side(result) in (19, 20, 21), f"{where}: box {box_side(result)}"
        background = ~dilated(original > 0.05, 2)
        assert result[background].mean() < 0.02, f"{where}: background {result[background].mean()}"
        assert result[background].max() < 0.5, where
        scores.append(aligned_correlation(result, original))
    if variant == "tiny":
        # 8 px keep too little of a digit for more: resampling alone (8 px and back) gives
        # r = 0.73-0.89 on these digits' boxes.
        assert np.mean(scores) > 0.8, scores
        assert min(scores) > 0.7, scores
    else:
        assert min(scores) > 0.8, scores


def test_pen_strokes_are_thickened_to_mnist_width(digits: list[U8]) -> None:
    mnist = np.median([stroke_width(d / np.float32(255)) for d in digits])
    for digit in digits:
        result = image_from_bytes(pen_photo(digit), max_pixels=MAX_PIXELS)
        assert stroke_width(result) > 0.7 * mnist


def test_exif_orientation_is_applied(digits: list[U8]) -> None:
    # Stored lying on its side, with the tag that tells viewers to turn it upright.
    stored = Image.fromarray(digits[7]).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    result = image_from_bytes(encode(stored, "PNG", exif=exif), max_pixels=MAX_PIXELS)
    assert np.abs(result - digits[7] / 255.0).mean() < 0.01


def test_big_phone_jpeg_stored_sideways(digits: list[U8]) -> None:
    """A 2600x1950 camera JPEG with an EXIF turn: decoded at reduced scale, then set upright."""
    ink = np.zeros((1950, 2600), dtype=np.float32)
    big = np.asarray(resized_digit(digits[4], 1200), dtype=np.float32) / 255
    ink[400 : 400 + big.shape[0], 900 : 900 + big.shape[1]] = big
    upright = Image.open(io.BytesIO(photo(paper(1950, 2600) * (1 - 0.8 * ink), seed=5)))
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 counter-clockwise to display"
    sideways = upright.transpose(Image.Transpose.ROTATE_270)
    result = image_from_bytes(
        encode(sideways, "JPEG", quality=90, exif=exif), max_pixels=MAX_PIXELS
    )
    assert aligned_correlation(result, digits[4] / np.float32(255)) > 0.8
    assert box_side(result) == 20


def test_animated_gif_uses_the_first_frame(digits: list[U8]) -> None:
    frames = [Image.fromarray(digits[1]), Image.fromarray(digits[8])]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    result = image_from_bytes(data, max_pixels=MAX_PIXELS)
    assert np.abs(result - digits[1] / 255.0).mean() < 0.01


def _rendered_modes(digit: U8) -> dict[str, bytes]:
    ink = Image.fromarray(digit)
    black_on_white = Image.fromarray(255 - digit)
    sixteen = Image.fromarray(digit.astype(np.uint16) * 257)
    alpha_only = Image.merge("LA", [Image.new("L", ink.size, 0), ink])
    palette = black_on_white.convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    white_clear = np.zeros((28, 28, 4), dtype=np.uint8)
    white_clear[..., :3] = 255 - digit[..., None]
    white_clear[..., 3] = np.where(digit > 0, 255, 0)
    sixteen_clear = Image.fromarray((255 - digit).astype(np.uint16) * 257)
    return {
        "16-bit PNG": encode(sixteen, "PNG"),
        "16-bit PNG, white transparent": encode(sixteen_clear, "PNG", transparency=65535),
        "LA PNG, ink in alpha": encode(alpha_only, "PNG"),
        "GIF with transparent paper": encode(
            palette, "GIF", transparency=palette.info["transparency"]
        ),
        "RGBA, white transparent paper": encode(Image.fromarray(white_clear, "RGBA"), "PNG"),
        "CMYK JPEG": encode(black_on_white.convert("CMYK"), "JPEG", quality=95),
        "RGB BMP": encode(black_on_white.convert("RGB"), "BMP"),
        "1-bit PNG": encode(ink.point(lambda v: 255 if v > 127 else 0).convert("1"), "PNG"),
    }


def test_image_modes_all_work(digits: list[U8]) -> None:
    original = digits[2] / np.float32(255)
    for mode, data in _rendered_modes(digits[2]).items():
        result = image_from_bytes(data, max_pixels=MAX_PIXELS)
        assert aligned_correlation(result, original) > 0.9, mode
        if mode in ("16-bit PNG", "16-bit PNG, white transparent", "LA PNG, ink in alpha"):
            assert np.abs(result - original).mean() < 0.01, mode


def test_to_grayscale_handles_float_and_32_bit_images(digits: list[U8]) -> None:
    levels = digits[6].astype(np.float32) / 255
    from_float = to_grayscale(Image.fromarray(levels, "F"))
    from_int = to_grayscale(Image.fromarray(digits[6].astype(np.int32) * 257, "I"))
    np.testing.assert_allclose(from_float, levels)
    np.testing.assert_allclose(from_int, levels, atol=1e-6)
    np.testing.assert_allclose(mnistify(from_float), digits[6] / 255.0, atol=0.01)


def test_mnistify_is_pure_and_polarity_free(digits: list[U8]) -> None:
    grey = np.ascontiguousarray(digits[9] / np.float32(255))
    before = grey.copy()
    white_on_black = mnistify(grey)
    np.testing.assert_array_equal(grey, before)
    np.testing.assert_allclose(mnistify(1 - grey), white_on_black, atol=1e-5)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param(np.zeros((28, 28, 3)), "2-D", id="3-d"),
        pytest.param(np.zeros(0).reshape(0, 5), "2-D", id="empty"),
        pytest.param(np.full((28, 28), np.nan), "NaN", id="nan"),
        pytest.param(np.full((28, 28), 0.3), "blank", id="uniform"),
    ],
)
def test_mnistify_bad_input(value: F32, fragment: str) -> None:
    fails(lambda: mnistify(value), 422, fragment)


# --------------------------------------------------------------------------- bad image files


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bilevel_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A valid all-black 1-bit PNG, built without ever holding its pixels: a few KB.

    ``rows`` < height writes only that many rows of pixel data (a header that lies).
    """
    compressor = zlib.compressobj(9)
    row = bytes(1 + math.ceil(width / 8))  # filter byte + packed pixels
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def test_decompression_bomb_beyond_pillows_own_limit_is_413() -> None:
    bomb = bilevel_png(20_000, 20_000)  # 400 million pixels in about 50 KB
    assert len(bomb) < 100_000
    fails(lambda: image_from_bytes(bomb, max_pixels=10**10), 413, "too large", "scale it down")


def test_image_over_max_pixels_is_413_before_decoding() -> None:
    fails(
        lambda: image_from_bytes(bilevel_png(5_000, 5_000), max_pixels=1_000_000),
        413,
        "5000x5000 = 25,000,000 pixels",
        "limit of 1,000,000",
    )
    # The header alone decides: these rows are missing, yet the answer is 413, not 400.
    liar = bilevel_png(9_000, 9_000, rows=1)
    fails(lambda: image_from_bytes(liar, max_pixels=MAX_PIXELS), 413, "9000x9000")
    liar = bilevel_png(100_000, 100_000, rows=1)
    fails(lambda: image_from_bytes(liar, max_pixels=MAX_PIXELS), 413, "scale it down")


def test_pillow_bomb_warning_is_an_error_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    warning_band = bilevel_png(1_500, 1_000)  # over Pillow's limit, under twice of it
    with pytest.warns(Image.DecompressionBombWarning):
        fails(lambda: image_from_bytes(warning_band, max_pixels=10**9), 413, "limit of 1,000,000")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        fails(lambda: image_from_bytes(warning_band, max_pixels=10**9), 413, "too large")


def test_a_png_whose_decoded_size_exceeds_the_limit_is_refused_before_decoding() -> None:
    # Half the file is missing: decoding would answer 400, so 413 means only the header was read.
    whole = blank_png(2_500, 2_500, "RGBA")
    message = fails(
        lambda: image_from_bytes(
            whole[: len(whole) // 2], max_pixels=MAX_PIXELS, max_bytes=16_000_000
        ),
        413,
        "2500x2500 in mode RGBA",
        "25,000,000 bytes",
        "limit of 16,000,000 (MNIST_MAX_IMAGE_BYTES)",
        "scale it down",
    )
    assert "28x28" in message


@pytest.mark.parametrize(("mode", "per_pixel"), [("L", 1), ("I;16", 2), ("RGBA", 4)])
def test_the_decoded_size_counts_channels_and_bit_depth(mode: str, per_pixel: int) -> None:
    image = open_image(blank_png(300, 200, mode), max_pixels=MAX_PIXELS, max_bytes=10**9)
    with image:
        assert decoded_bytes(image) == 300 * 200 * per_pixel


def test_the_same_size_passes_in_grey_and_is_refused_in_rgba() -> None:
    grey = open_image(blank_png(2_500, 2_500, "L"), max_pixels=MAX_PIXELS, max_bytes=16_000_000)
    grey.close()
    fails(
        lambda: open_image(
            blank_png(2_500, 2_500, "RGBA"), max_pixels=MAX_PIXELS, max_bytes=16_000_000
        ),
        413,
        "MNIST_MAX_IMAGE_BYTES",
    )


def test_a_big_photo_counts_at_the_reduced_scale_its_jpeg_decodes_at() -> None:
    photo = encode(Image.new("RGB", (3_000, 3_000), (200, 180, 160)), "JPEG")
    image = open_image(photo, max_pixels=MAX_PIXELS, max_bytes=16_000_000)  # 36 MB at full scale
    with image:
        assert image.mode == "L"
        assert decoded_bytes(image) <= 1_500 * 1_500


@pytest.mark.parametrize("max_pixels", [MAX_PIXELS, 16_000_000], ids=["under", "over"])
def test_a_jpeg_whose_header_claims_more_pixels_than_its_data_holds_is_400(
    max_pixels: int,
) -> None:
    # Even when the size it claims is over the limit: the file is corrupt, not too big.
    liar = lying_jpeg(6_000)
    assert len(liar) < 1_000
    # Pillow alone accepts it and invents the missing pixels: the check is ours.
    with Image.open(io.BytesIO(liar)) as image:
        image.draft("L", (1_024, 1_024))
        image.load()
    fails(
        lambda: image_from_bytes(liar, max_pixels=max_pixels),
        400,
        "corrupt or truncated",
        "says 6000x6000",
        f"the file has {len(liar):,} bytes",
        "send the complete file",
    )


def test_an_arithmetic_coded_jpeg_is_415_with_what_to_save_instead() -> None:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, "JPEG")
    baseline = buffer.getvalue()
    at = baseline.index(b"\xff\xc0")  # the baseline frame: the same header, arithmetic-coded
    arithmetic = baseline[:at] + b"\xff\xc9" + baseline[at + 2 :]
    fails(lambda: image_from_bytes(arithmetic, max_pixels=MAX_PIXELS), 415, "baseline")


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_a_genuine_flat_jpeg_of_that_size_is_not_taken_for_a_liar(progressive: bool) -> None:
    flat = encode(Image.new("L", (6_000, 6_000)), "JPEG", progressive=progressive, optimize=True)
    open_image(flat, max_pixels=MAX_PIXELS, max_bytes=16_000_000).close()


def test_pillow_never_makes_up_the_rest_of_a_truncated_file() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 20], ids=["half", "20-bytes"])
def test_truncated_files_are_400(digits: list[U8], fmt: str, keep: float) -> None:
    whole = encode(Image.fromarray(digits[0]).resize((200, 200)), fmt)
    cut = whole[: int(len(whole) * keep) if keep < 1 else int(keep)]
    fails(
        lambda: image_from_bytes(cut, max_pixels=MAX_PIXELS),
        400,
        "corrupt or truncated",
        "send the complete file",
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param(
            np.random.default_rng(1).bytes(3000), "PNG, JPEG, GIF, BMP or WebP", id="random"
        ),
        pytest.param(b"II*\x00" + bytes(100), "looks like TIFF", id="tiff"),
        pytest.param(b"%PDF-1.7\n", "looks like PDF", id="pdf"),
        pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG", id="svg"),
        pytest.param(b"\x00\x00\x00\x18ftypheic" + bytes(20), "HEIC", id="heic"),
    ],
)
def test_not_an_accepted_image_is_415(data: bytes, fragment: str) -> None:
    fails(lambda: image_from_bytes(data, max_pixels=MAX_PIXELS), 415, fragment)


def test_empty_file_is_400() -> None:
    fails(lambda: image_from_bytes(b"", max_pixels=MAX_PIXELS), 400, "empty")


@pytest.mark.parametrize(
    "picture",
    [
        pytest.param(lambda: Image.new("L", (64, 64), 255), id="white"),
        pytest.param(lambda: Image.new("RGBA", (64, 64), (0, 0, 0, 0)), id="transparent"),
        pytest.param(lambda: Image.new("RGB", (300, 200), (90, 120, 200)), id="flat-colour"),
    ],
)
def test_blank_image_is_422(picture: Callable[[], Image.Image]) -> None:
    data = encode(picture(), "PNG")
    fails(lambda: image_from_bytes(data, max_pixels=MAX_PIXELS), 422, "blank", "no digit")


def test_photo_of_empty_paper_is_blank() -> None:
    data = photo(paper(480, 640), seed=3)
    fails(lambda: image_from_bytes(data, max_pixels=MAX_PIXELS), 422, "blank")
