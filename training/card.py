"""The model card: what was trained, on what, how well, when and with which libraries."""

from __future__ import annotations

import hashlib
import platform
from datetime import UTC, datetime
from importlib import metadata

import keras
import numpy as np

from model_contract import LibraryVersions, ModelCard
from training.revision import git_commit


def weights_digest(model: keras.Model) -> str:
    """sha256 over every weight array, in layer order: equal weights give equal digests."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        contiguous = np.ascontiguousarray(array)
        digest.update(str(contiguous.shape).encode())
        digest.update(contiguous.tobytes())
    return digest.hexdigest()


def model_id(dataset: str, trained_at: datetime, digest: str) -> str:
    stamp = trained_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{dataset.replace('_', '-')}-convnet-{stamp}-{digest[:8]}"


def _version(distribution: str, *alternatives: str) -> str:
    for name in (distribution, *alternatives):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def library_versions() -> LibraryVersions:
    return LibraryVersions(
        tensorflow=_version("tensorflow-cpu", "tensorflow"),
        keras=_version("keras"),
        tf2onnx=_version("tf2onnx"),
        onnx=_version("onnx"),
        python=platform.python_version(),
    )


def build_model_card(
    *,
    model: keras.Model,
    version: int | None,
    dataset: str,
    class_names: list[str],
    train_size: int,
    test_size: int,
    validation_split: float,
    epochs: int,
    batch_size: int,
    optimizer: str,
    loss: str,
    test_accuracy: float,
    test_loss: float,
    training_seconds: float,
    trained_at: datetime,
    seed: int,
) -> ModelCard:
    return ModelCard(
        id=model_id(dataset, trained_at, weights_digest(model)),
        version=version,
        dataset=dataset,
        class_names=class_names,
        train_size=train_size,
        test_size=test_size,
        validation_split=validation_split,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        loss=loss,
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        training_seconds=training_seconds,
        trained_at=trained_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        library_versions=library_versions(),
        git_commit=git_commit(),
        seed=seed,
    )
