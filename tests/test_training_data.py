"""The IDX reader and dataset loader: good files load exactly, bad files fail clearly."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.training_idx import idx_bytes, random_split, write_file, write_split_dir
from training.data import (
    DatasetError,
    RawSplit,
    hold_out,
    load_dataset,
    prepare,
    read_idx_images,
    read_idx_labels,
)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_reads_images_and_labels_raw_and_gzipped(tmp_path: Path, suffix: str) -> None:
    split = random_split(7, seed=1)
    images = write_file(tmp_path / f"images{suffix}", idx_bytes(split.images))
    labels = write_file(tmp_path / f"labels{suffix}", idx_bytes(split.labels))

    assert np.array_equal(read_idx_images(images), split.images)
    assert read_idx_images(images).shape == (7, 28, 28)
    assert np.array_equal(read_idx_labels(labels), split.labels)


def test_truncated_images_name_the_file_and_the_shortfall(tmp_path: Path) -> None:
    content = idx_bytes(random_split(3, seed=2).images)
    path = write_file(tmp_path / "train-images-idx3-ubyte.gz", content[:-100])

    with pytest.raises(DatasetError, match="truncated") as error:
        read_idx_images(path)
    assert str(path) in str(error.value)
    assert "2,352 bytes" in str(error.value)  # 3 images x 784 pixels promised


def test_file_shorter_than_its_header(tmp_path: Path) -> None:
    path = write_file(tmp_path / "labels", b"\x00\x00\x08")
    with pytest.raises(DatasetError, match=r"truncated.*header"):
        read_idx_labels(path)


def test_trailing_bytes_are_rejected(tmp_path: Path) -> None:
    path = write_file(tmp_path / "labels", idx_bytes(random_split(4, seed=3).labels) + b"\x01")
    with pytest.raises(DatasetError, match="1 unexpected bytes"):
        read_idx_labels(path)


def test_labels_file_given_as_images_reports_wrong_magic(tmp_path: Path) -> None:
    path = write_file(tmp_path / "images.gz", idx_bytes(random_split(2, seed=4).labels))
    with pytest.raises(DatasetError) as error:
        read_idx_images(path)
    message = str(error.value)
    assert str(path) in message
    assert "wrong magic number 2049" in message
    assert "expected 2051" in message


def test_unknown_magic_number(tmp_path: Path) -> None:
    split = random_split(2, seed=5)
    path = write_file(tmp_path / "labels", idx_bytes(split.labels, magic=0x12345678))
    with pytest.raises(DatasetError, match=r"wrong magic number 305419896; expected 2049"):
        read_idx_labels(path)


def test_images_must_be_28_by_28(tmp_path: Path) -> None:
    path = write_file(tmp_path / "images", idx_bytes(np.zeros((2, 32, 32), dtype=np.uint8)))
    with pytest.raises(DatasetError, match="images are 32x32; expected 28x28"):
        read_idx_images(path)


def test_label_outside_0_to_9(tmp_path: Path) -> None:
    labels = np.array([3, 1, 12, 4, 200], dtype=np.uint8)
    path = write_file(tmp_path / "labels.gz", idx_bytes(labels))
    with pytest.raises(DatasetError) as error:
        read_idx_labels(path)
    assert "label 12 at index 2 is outside 0-9 (2 bad labels in all)" in str(error.value)
    assert str(path) in str(error.value)


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(random_split(50, seed=6).labels))[:-20])
    with pytest.raises(DatasetError, match="not a valid gzip file") as error:
        read_idx_labels(path)
    assert str(path) in str(error.value)


def test_image_and_label_counts_must_match(tmp_path: Path) -> None:
    train, test = random_split(10, seed=7), random_split(5, seed=8)
    directory = write_split_dir(tmp_path, train, test)
    write_file(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(train.labels[:9]))

    with pytest.raises(DatasetError) as error:
        load_dataset("mnist", directory)
    message = str(error.value)
    assert "10 images but 9 labels" in message
    assert "train-images-idx3-ubyte.gz" in message
    assert "train-labels-idx1-ubyte.gz" in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    directory = write_split_dir(tmp_path, random_split(4, seed=9), random_split(4, seed=10))
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte: file not found"):
        load_dataset("mnist", directory)


def test_data_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset("mnist", tmp_path / "nowhere")


def test_uncompressed_directory_loads_and_is_prepared(tmp_path: Path) -> None:
    train, test = random_split(12, seed=11), random_split(6, seed=12)
    dataset = load_dataset("fashion_mnist", write_split_dir(tmp_path, train, test, gzipped=False))

    assert dataset.class_names[9] == "Ankle boot"
    assert dataset.train.images.shape == (12, 28, 28, 1)
    assert dataset.train.images.dtype == np.float32
    assert np.allclose(dataset.train.images[..., 0] * 255.0, train.images)
    assert np.array_equal(dataset.test.labels, test.labels)
    assert np.array_equal(dataset.test.one_hot.argmax(axis=1), test.labels)
    assert np.all(dataset.test.one_hot.sum(axis=1) == 1.0)


def test_offline_mnist_loads_with_expected_sizes(mnist_offline_dir: Path) -> None:
    dataset = load_dataset("mnist", mnist_offline_dir)

    assert (len(dataset.train), len(dataset.test)) == (5000, 10000)
    assert np.bincount(dataset.train.labels).tolist() == [500] * 10
    assert dataset.test.images.min() == 0.0
    assert dataset.test.images.max() == 1.0


def test_prepare_scales_to_unit_range() -> None:
    raw = RawSplit(
        images=np.array([[[0] * 28] * 27 + [[255] * 28]], dtype=np.uint8),
        labels=np.array([3], dtype=np.uint8),
    )
    split = prepare(raw)
    assert split.images.shape == (1, 28, 28, 1)
    assert split.images[0, 0, 0, 0] == 0.0
    assert split.images[0, 27, 0, 0] == 1.0
    assert split.one_hot.tolist() == [[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]]


def test_hold_out_takes_a_random_share_without_overlap() -> None:
    # Sorted labels, like the offline subset: a tail split would hold out only nines.
    raw = RawSplit(
        images=np.arange(100, dtype=np.uint8).repeat(784).reshape(100, 28, 28),
        labels=np.repeat(np.arange(10, dtype=np.uint8), 10),
    )
    train, validation = hold_out(prepare(raw), 0.2, seed=3)

    assert validation is not None
    assert (len(train), len(validation)) == (80, 20)
    seen = np.concatenate([train.images[:, 0, 0, 0], validation.images[:, 0, 0, 0]]) * 255
    assert sorted(np.rint(seen).astype(int).tolist()) == list(range(100))
    assert len(set(validation.labels.tolist())) > 3
    assert hold_out(prepare(raw), 0.0, seed=3)[1] is None


def test_default_source_is_keras_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = random_split(5, seed=13), random_split(3, seed=14)
    calls: list[str] = []

    def load_data() -> Any:
        calls.append("fashion_mnist")
        return (train.images, train.labels), (test.images, test.labels)

    fake = SimpleNamespace(
        datasets=SimpleNamespace(mnist=None, fashion_mnist=SimpleNamespace(load_data=load_data))
    )
    monkeypatch.setitem(sys.modules, "keras", fake)
    dataset = load_dataset("fashion_mnist")

    assert calls == ["fashion_mnist"]
    assert dataset.source == "keras.datasets.fashion_mnist"
    assert np.array_equal(dataset.test.labels, test.labels)


def test_download_failure_suggests_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_data() -> Any:
        raise OSError("no network")

    fake = SimpleNamespace(datasets=SimpleNamespace(mnist=SimpleNamespace(load_data=load_data)))
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(DatasetError, match=r"load_data\(\) failed \(no network\).*--data-dir"):
        load_dataset("mnist")


def test_unknown_dataset_name() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", None)  # type: ignore[arg-type]


def test_reader_does_not_import_tensorflow() -> None:
    probe = "import sys, training.data; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
