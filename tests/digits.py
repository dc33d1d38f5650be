"""Digits as image files, the way a person would save them."""

import io

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
