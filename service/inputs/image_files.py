"""Image files: PNG, JPEG, GIF (first frame), BMP and WebP, made MNIST-like.

A file's header is read and checked first (its format from its first bytes, its size
against the pixel and decoded-byte limits, a JPEG's data against what its header claims),
so that a request can be refused, or admitted by the decode budget, before a pixel is
decoded. Decoding applies the EXIF orientation, composites transparency onto white and
makes grey levels; ``service.inputs.mnist_like`` does the rest.
"""

import io
import math
import struct
from typing import Final

import numpy as np
from PIL import ExifTags, Image, ImageOps

from service.errors import InputError
from service.inputs.mnist_like import WORK_SIDE, Grey, mnistify
from service.inputs.tensors import NPY_MAGIC

# What Pillow holds once an image is decoded: 4,000,000 pixels of RGBA. A digit needs far
# fewer, and the pipeline's copies (composited, grey) take about as much again.
MAX_DECODED_BYTES: Final = 16_000_000
_BYTES_PER_PIXEL: Final = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_SOF: Final = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_ARITHMETIC_SOF: Final = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
ACCEPTED: Final = "PNG, JPEG, GIF, BMP or WebP"
MEDIA_TYPES: Final = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp")

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
    (NPY_MAGIC, "a .npy array (send it as application/x-npy)"),
)


def image_from_bytes(data: bytes, *, max_pixels: int, max_bytes: int = MAX_DECODED_BYTES) -> Grey:
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


def image_from_opened(image: Image.Image) -> Grey:
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
    fewer bits than blocks means the file is not what its header says. Arithmetic coding
    has no such floor, so those files are refused: hardly any tool writes them, and
    browsers cannot open them either.
    """
    frame = _jpeg_frame(data)
    if frame is None:
        return
    if frame.marker in _ARITHMETIC_SOF:
        raise InputError(
            "this JPEG file is arithmetic-coded, which is not accepted (its size cannot be "
            "checked against its data, and browsers cannot open it either): save it as a "
            "baseline or progressive JPEG, or as PNG",
            status=415,
        )
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
    raise InputError(f"not an image format we accept{seen}: send {ACCEPTED}", status=415)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InputError(f"the image file is empty: send the bytes of a {ACCEPTED}", 400)
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


def to_grayscale(image: Image.Image) -> Grey:
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
