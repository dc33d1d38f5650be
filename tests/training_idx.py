"""Write IDX files (raw or gzipped) and small MNIST directories for the training tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

from training.data import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    RawSplit,
)


def idx_bytes(array: npt.NDArray[np.uint8], magic: int | None = None) -> bytes:
    """IDX encoding of ``array``; ``magic`` overrides the one its rank implies."""
    default = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    header = struct.pack(f">I{array.ndim}I", default if magic is None else magic, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_file(path: Path, content: bytes) -> Path:
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
    return path


def write_split_dir(
    directory: Path, train: RawSplit, test: RawSplit, *, gzipped: bool = True
) -> Path:
    """A directory with the four standard MNIST files."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gzipped else ""
    for stem, array in (
        (TRAIN_IMAGES, train.images),
        (TRAIN_LABELS, train.labels),
        (TEST_IMAGES, test.images),
        (TEST_LABELS, test.labels),
    ):
        write_file(directory / f"{stem}{suffix}", idx_bytes(array))
    return directory


def random_split(count: int, seed: int) -> RawSplit:
    rng = np.random.default_rng(seed)
    return RawSplit(
        images=rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8),
        labels=rng.integers(0, 10, size=count, dtype=np.uint8),
    )
