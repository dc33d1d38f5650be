"""Digits as image files, the way a person would save them."""

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """A uint8 28x28 digit (white on black) as an image file."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format=fmt)
    return buffer.getvalue()


def drawn_one(size: int = 28) -> bytes:
    """A hand-drawn-looking 1 as PNG, for tests that need a valid image but no dataset."""
    image = Image.new("L", (size, size))
    ImageDraw.Draw(image).line([(size // 2, size // 6), (size // 2, size * 5 // 6)], 255, 3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def blank_png(width: int, height: int, mode: str = "RGBA") -> bytes:
    """A valid PNG of zeros, built a row at a time without holding its pixels: zeros
    compress about a thousandfold, so a 40-megapixel RGBA image is some 150 KB."""
    colour_type, bits, channels = {"RGBA": (6, 8, 4), "L": (0, 8, 1), "I;16": (0, 16, 2)}[mode]
    compressor = zlib.compressobj(9)
    row = bytes(1 + width * channels)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def lying_jpeg(claimed_side: int = 6000) -> bytes:
    """A real 16x16 JPEG of a bar whose frame header is patched to claim a bigger size."""
    image = Image.new("L", (16, 16))
    ImageDraw.Draw(image).line([(8, 2), (8, 13)], 255, 2)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # baseline start of frame: length, precision, height, width
    data[frame + 5 : frame + 9] = struct.pack(">HH", claimed_side, claimed_side)
    return bytes(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
