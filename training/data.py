"""MNIST-style data: a strict IDX reader and the loader that turns it into model inputs.

TensorFlow is imported only on the default (download) path, so reading and validating IDX
files stays fast and testable without it.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

DatasetName = Literal["mnist", "fashion_mnist"]
DATASETS: Final[tuple[DatasetName, ...]] = ("mnist", "fashion_mnist")

CLASS_NAMES: Final[dict[DatasetName, tuple[str, ...]]] = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}

NUM_CLASSES: Final = 10
IMAGE_SIDE: Final = 28
IMAGES_MAGIC: Final = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC: Final = 2049  # 0x00000801: unsigned bytes, 1 dimension

TRAIN_IMAGES: Final = "train-images-idx3-ubyte"
TRAIN_LABELS: Final = "train-labels-idx1-ubyte"
TEST_IMAGES: Final = "t10k-images-idx3-ubyte"
TEST_LABELS: Final = "t10k-labels-idx1-ubyte"

U8Array = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]


class DatasetError(Exception):
    """The data is missing or malformed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class RawSplit:
    """One split as stored: uint8 images (N, 28, 28) and uint8 labels (N,)."""

    images: U8Array
    labels: U8Array


@dataclass(frozen=True)
class Split:
    """One split ready for Keras: images float32 (N, 28, 28, 1) in [0, 1], labels both ways."""

    images: F32Array
    labels: U8Array
    one_hot: F32Array

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    name: DatasetName
    source: str
    train: Split
    test: Split

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[self.name]


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: not a valid gzip file ({exc})") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _header(path: Path, data: bytes, magic: int, dims: int) -> tuple[int, ...]:
    """Check the magic number and return the dimension sizes that follow it."""
    header_size = 4 + 4 * dims
    truncated = DatasetError(
        f"{path}: truncated: {len(data)} bytes, shorter than the {header_size}-byte IDX header"
    )
    if len(data) < 4:
        raise truncated
    # The magic number first: a labels file passed as images is the likelier mistake,
    # and it is also shorter than an images header.
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        kinds = {IMAGES_MAGIC: "an images file", LABELS_MAGIC: "a labels file"}
        hint = f" (that is {kinds[found]})" if found in kinds else ""
        raise DatasetError(
            f"{path}: wrong magic number {found}{hint}; expected {magic} for {kinds[magic]}"
        )
    if len(data) < header_size:
        raise truncated
    return struct.unpack(f">{dims}I", data[4:header_size])


def _payload(path: Path, data: bytes, offset: int, expected: int, what: str) -> U8Array:
    body = len(data) - offset
    if body < expected:
        raise DatasetError(
            f"{path}: truncated: the header promises {what} ({expected:,} bytes) "
            f"but only {body:,} bytes follow"
        )
    if body > expected:
        raise DatasetError(
            f"{path}: {body - expected:,} unexpected bytes after {what} ({expected:,} bytes)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset)


def read_idx_images(path: Path) -> U8Array:
    """Read an IDX3 images file (optionally gzipped) as uint8 (N, 28, 28)."""
    data = _read_bytes(path)
    count, rows, cols = _header(path, data, IMAGES_MAGIC, 3)
    if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
        raise DatasetError(f"{path}: images are {rows}x{cols}; expected {IMAGE_SIDE}x{IMAGE_SIDE}")
    pixels = _payload(path, data, 16, count * rows * cols, f"{count:,} images of {rows}x{cols}")
    return pixels.reshape(count, rows, cols)


def read_idx_labels(path: Path) -> U8Array:
    """Read an IDX1 labels file (optionally gzipped) as uint8 (N,), every label in 0-9."""
    data = _read_bytes(path)
    (count,) = _header(path, data, LABELS_MAGIC, 1)
    labels = _payload(path, data, 8, count, f"{count:,} labels")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DatasetError(
            f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside 0-9 "
            f"({bad.size:,} bad labels in all)"
        )
    return labels


def find_idx_file(directory: Path, stem: str) -> Path:
    """The file for ``stem`` in ``directory``, raw or gzipped (raw wins when both exist)."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{directory / stem}: file not found (neither {stem} nor {stem}.gz)")


def check_split(images: U8Array, labels: U8Array, where: str) -> RawSplit:
    """Validate a split from any source: shapes, dtype, matching counts, labels in 0-9."""
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DatasetError(
            f"{where}: expected uint8 images and labels, got {images.dtype} and {labels.dtype}"
        )
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DatasetError(f"{where}: images have shape {images.shape}; expected (N, 28, 28)")
    if labels.ndim != 1:
        raise DatasetError(f"{where}: labels have shape {labels.shape}; expected (N,)")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{where}: {images.shape[0]:,} images but {labels.shape[0]:,} labels")
    if images.shape[0] == 0:
        raise DatasetError(f"{where}: no images")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DatasetError(f"{where}: labels must be 0-9, found {int(labels.max())}")
    return RawSplit(images=images, labels=labels)


def read_idx_split(directory: Path, images_stem: str, labels_stem: str) -> RawSplit:
    images_path = find_idx_file(directory, images_stem)
    labels_path = find_idx_file(directory, labels_stem)
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    return check_split(images, labels, f"{images_path} + {labels_path.name}")


def prepare(raw: RawSplit) -> Split:
    """Scale to float32 in [0, 1], add the channel axis, and one-hot encode the labels."""
    images = (raw.images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[raw.labels]
    return Split(images=images, labels=raw.labels, one_hot=one_hot)


def _download(name: DatasetName) -> tuple[RawSplit, RawSplit]:
    import keras  # only the download path needs Keras

    module = keras.datasets.mnist if name == "mnist" else keras.datasets.fashion_mnist
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as exc:  # network, cache or checksum: all mean "no data"
        raise DatasetError(
            f"keras.datasets.{name}.load_data() failed ({exc}); "
            "without internet access, pass --data-dir with the IDX files"
        ) from exc
    source = f"keras.datasets.{name}"
    return (
        check_split(x_train, y_train, f"{source} (train)"),
        check_split(x_test, y_test, f"{source} (test)"),
    )


def load_dataset(name: DatasetName, data_dir: Path | None = None) -> Dataset:
    """Load ``name`` from ``data_dir`` (standard IDX files) or, without it, from Keras."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is None:
        train, test = _download(name)
        source = f"keras.datasets.{name}"
    else:
        if not data_dir.is_dir():
            raise DatasetError(f"{data_dir}: not a directory")
        train = read_idx_split(data_dir, TRAIN_IMAGES, TRAIN_LABELS)
        test = read_idx_split(data_dir, TEST_IMAGES, TEST_LABELS)
        source = str(data_dir)
    return Dataset(name=name, source=source, train=prepare(train), test=prepare(test))


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """Move a random ``fraction`` of ``split`` into a validation split.

    Random rather than Keras' ``validation_split`` (which takes the last rows) because
    IDX files may be sorted by label, as the offline training subset is.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    count = round(len(split) * fraction)
    if count == 0:
        return split, None
    if count >= len(split):
        raise ValueError(f"validation fraction {fraction} leaves no training images")
    order = np.random.default_rng(seed).permutation(len(split))
    keep, held = np.sort(order[count:]), np.sort(order[:count])

    def take(rows: npt.NDArray[np.intp]) -> Split:
        return Split(
            images=split.images[rows], labels=split.labels[rows], one_hot=split.one_hot[rows]
        )

    return take(keep), take(held)
