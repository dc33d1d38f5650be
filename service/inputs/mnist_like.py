"""A grey picture of one digit -> 28x28 the way MNIST digits were made.

Polarity detected (dark ink on light paper is inverted), uneven lighting and paper grey
removed, contrast stretched so the ink reaches 1, cropped to the ink, pen-thin strokes
widened, longest side scaled to 20 px, and pasted into 28x28 with the centre of mass at
(14, 14) (row, column index). Pure numpy (and Pillow's resampling): no I/O.
"""

import math
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.errors import InputError
from service.inputs.model_input import SIDE

Grey = npt.NDArray[np.float32]

DIGIT_BOX: Final = 20  # MNIST digits fill a 20x20 box inside the 28x28 field
CENTRE: Final = 14.0  # where MNIST puts the centre of mass (row and column index)
WORK_SIDE: Final = 1024  # bigger pictures are averaged down first: the digit ends up 20 px

# Tuning of the pipeline, in grey levels of [0, 1] unless said otherwise.
_FLAT_BORDER: Final = 0.03  # border spread (10th-90th percentile) below which lighting is even
_NOISE_FLOOR_SIGMAS: Final = 3.0  # background noise below this many sigmas is cut to black
_MIN_CONTRAST: Final = 0.04  # about 10 grey levels: less ink than this is a blank image
_INK_THRESHOLD: Final = 0.1  # of the stretched ink level: what counts for the bounding box
# Stroke width in pixels of the final 20 px box (2 * area / perimeter of the ink above 0.5).
# MNIST digits measure 1.0 (1st percentile), 1.8 (median); a pen on a phone photo ~0.6.
_THIN_STROKE: Final = 1.0
_STROKE: Final = 1.8


def mnistify(gray: npt.ArrayLike) -> Grey:
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


def _reduced(grey: Grey) -> Grey:
    """Average blocks so that the longest side is at most WORK_SIDE (edges padded, not cut)."""
    factor = math.ceil(max(grey.shape) / WORK_SIDE)
    if factor <= 1:
        return grey
    height, width = grey.shape
    pad = ((0, -height % factor), (0, -width % factor))
    padded = np.pad(grey, pad, mode="edge")
    rows, cols = padded.shape[0] // factor, padded.shape[1] // factor
    blocks = padded.reshape(rows, factor, cols, factor)
    reduced: Grey = blocks.mean(axis=(1, 3), dtype=np.float32)
    return reduced


def _ink(grey: Grey) -> Grey:
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


def _rank(values: Grey, q: float) -> float:
    """The q-quantile by rank (no interpolation): np.partition is much cheaper than median."""
    k = min(values.size - 1, int(q * values.size))
    return float(np.partition(values.ravel(), k)[k])


def _ranks(values: Grey, low: float, high: float) -> tuple[float, float]:
    last = values.size - 1
    ks = (min(last, int(low * values.size)), min(last, int(high * values.size)))
    ordered = np.partition(values.ravel(), ks)
    return float(ordered[ks[0]]), float(ordered[ks[1]])


def _ring(image: Grey) -> Grey:
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


def _box3(image: Grey) -> Grey:
    """3x3 means over the interior (the image itself when smaller): tells ink from specks."""
    if min(image.shape) < 3:
        return image
    rows = image[:-2] + image[1:-1] + image[2:]
    mean: Grey = (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) * np.float32(1.0 / 9.0)
    return mean


def _background(ink: Grey) -> Grey:
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
    full: Grey = surface + c[3] * u_full * u_full
    return full


def _cropped(ink: Grey) -> tuple[Grey, int]:
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


def _thickened(digit: Grey, longest: int) -> tuple[Grey, int]:
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


def _scaled_to_box(digit: Grey, longest: int) -> Grey:
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


def _centred(digit: Grey) -> Grey:
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
