"""The ONNX artifact contract, on a model fitted briefly once for this module."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from model_contract import ModelCard, ModelSummary, SelfTest
from training import export
from training.card import build_model_card
from training.data import load_dataset
from training.export import (
    ExportError,
    build_self_test,
    reference_digits,
    save,
    to_onnx,
    verify_export,
)
from training.model import LOSS, OPTIMIZER, build_model, describe_model


@dataclass(frozen=True)
class Exported:
    model: keras.Model
    path: Path
    images: npt.NDArray[np.float32]
    card: ModelCard
    self_test: SelfTest


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, mnist_offline_dir: Path) -> Exported:
    """1 epoch on 500 digits (50 per class): enough weights to compare, fast to fit."""
    dataset = load_dataset("mnist", mnist_offline_dir)
    keras.utils.set_random_seed(0)
    model = build_model()
    model.fit(dataset.train.images[::10], dataset.train.one_hot[::10], epochs=1, verbose=0)
    images = dataset.test.images[:300]
    card = build_model_card(
        model=model,
        version=3,
        dataset="mnist",
        class_names=list(dataset.class_names),
        train_size=500,
        test_size=300,
        validation_split=0.0,
        epochs=1,
        batch_size=32,
        optimizer=OPTIMIZER,
        loss=LOSS,
        test_accuracy=0.5,
        test_loss=1.5,
        training_seconds=1.0,
        trained_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        seed=0,
    )
    path = tmp_path_factory.mktemp("export") / "mnist.onnx"
    self_test = build_self_test(model, images[reference_digits(dataset.test.labels[:300])])
    save(to_onnx(model, describe_model(model), card, self_test), path)
    return Exported(model=model, path=path, images=images, card=card, self_test=self_test)


@pytest.fixture(scope="module")
def session(exported: Exported) -> ort.InferenceSession:
    return ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])


def test_input_and_output_names_types_and_dynamic_batch(session: ort.InferenceSession) -> None:
    (image,), (probabilities,) = session.get_inputs(), session.get_outputs()

    assert (image.name, image.type) == ("image", "tensor(float)")
    assert image.shape[1:] == [28, 28, 1]
    assert isinstance(image.shape[0], str)  # symbolic: any batch size
    assert (probabilities.name, probabilities.type) == ("probabilities", "tensor(float)")
    assert probabilities.shape[1:] == [10]
    assert isinstance(probabilities.shape[0], str)


@pytest.mark.parametrize("batch", [1, 33])
def test_batches_run_and_match_keras(
    exported: Exported, session: ort.InferenceSession, batch: int
) -> None:
    images = exported.images[:batch]
    (onnx_out,) = session.run(["probabilities"], {"image": images})
    keras_out = np.asarray(exported.model(images, training=False))

    assert onnx_out.shape == (batch, 10)
    assert onnx_out.dtype == np.float32
    assert np.allclose(onnx_out.sum(axis=1), 1.0, atol=1e-5)
    assert np.max(np.abs(onnx_out - keras_out)) <= 1e-4


def test_opset_and_graph_are_valid(exported: Exported) -> None:
    proto = onnx.load(str(exported.path))
    onnx.checker.check_model(proto)
    assert {o.domain: o.version for o in proto.opset_import}[""] == export.OPSET


def test_summary_metadata(exported: Exported, session: ort.InferenceSession) -> None:
    props = session.get_modelmeta().custom_metadata_map
    summary = json.loads(props["summary"])

    assert set(summary) == {"layers", "total_params", "trainable_params", "non_trainable_params"}
    assert summary["total_params"] == 93_322
    assert summary["layers"][0] == {
        "name": "conv_1",
        "type": "Conv2D",
        "output_shape": [None, 26, 26, 32],
        "params": 320,
    }
    assert [layer["output_shape"] for layer in summary["layers"]][-1] == [None, 10]
    assert ModelSummary.model_validate(summary) == describe_model(exported.model)


def test_model_card_metadata(exported: Exported, session: ort.InferenceSession) -> None:
    card = json.loads(session.get_modelmeta().custom_metadata_map["model_card"])

    assert {
        "id",
        "dataset",
        "train_size",
        "test_size",
        "epochs",
        "batch_size",
        "optimizer",
        "loss",
        "test_accuracy",
        "test_loss",
        "trained_at",
        "library_versions",
        "git_commit",
        "seed",
    } <= set(card)
    assert re.fullmatch(r"mnist-convnet-20250102T030405Z-[0-9a-f]{8}", card["id"])
    assert card["version"] == 3
    assert card["trained_at"] == "2025-01-02T03:04:05Z"
    assert set(card["library_versions"]) == {"tensorflow", "keras", "tf2onnx", "onnx", "python"}
    assert card["library_versions"]["tf2onnx"] == "1.17.0"
    assert (card["optimizer"], card["loss"]) == ("rmsprop", "categorical_crossentropy")
    assert ModelCard.model_validate(card) == exported.card


def test_model_id_follows_the_weights(exported: Exported) -> None:
    other = build_model()
    changed = build_model_card(**{**_card_arguments(exported), "model": other})
    same = build_model_card(**_card_arguments(exported))

    assert same.id == exported.card.id
    assert changed.id != exported.card.id


def _card_arguments(exported: Exported) -> dict[str, Any]:
    card = exported.card
    return {
        "model": exported.model,
        "version": card.version,
        "dataset": card.dataset,
        "class_names": card.class_names,
        "train_size": card.train_size,
        "test_size": card.test_size,
        "validation_split": card.validation_split,
        "epochs": card.epochs,
        "batch_size": card.batch_size,
        "optimizer": card.optimizer,
        "loss": card.loss,
        "test_accuracy": card.test_accuracy,
        "test_loss": card.test_loss,
        "training_seconds": card.training_seconds,
        "trained_at": datetime.fromisoformat(card.trained_at),
        "seed": card.seed,
    }


def test_verify_export_accepts_the_export(exported: Exported) -> None:
    assert verify_export(exported.path, exported.model, exported.images) <= 1e-4


def test_verify_export_rejects_other_weights(exported: Exported) -> None:
    keras.utils.set_random_seed(1)
    with pytest.raises(ExportError, match="disagree by up to"):
        verify_export(exported.path, build_model(), exported.images)


def test_verify_export_rejects_missing_metadata(exported: Exported, tmp_path: Path) -> None:
    proto = onnx.load(str(exported.path))
    kept = [p for p in proto.metadata_props if p.key != "summary"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    broken = tmp_path / "no-summary.onnx"
    save(proto, broken)

    with pytest.raises(ExportError, match="metadata 'summary' is missing"):
        verify_export(broken, exported.model, exported.images)


def test_the_self_test_holds_one_digit_of_each_class_and_keras_answers(
    exported: Exported, session: ort.InferenceSession
) -> None:
    stored = SelfTest.model_validate_json(session.get_modelmeta().custom_metadata_map["self_test"])
    pixels = stored.pixels()
    assert pixels.shape == (10, 28, 28, 1)
    expected = np.asarray(exported.model(pixels, training=False))
    np.testing.assert_allclose(stored.probabilities, expected, atol=1e-6)
    assert stored.failure(session.run(["probabilities"], {"image": pixels})[0]) is None


def test_verify_export_rejects_a_self_test_the_model_fails(
    exported: Exported, tmp_path: Path
) -> None:
    proto = onnx.load(str(exported.path))
    wrong = SelfTest.of(
        np.rint(exported.self_test.pixels()[..., 0] * 255),
        np.full((10, 10), 0.1),
        exported.self_test.tolerance,
    )
    for prop in proto.metadata_props:
        if prop.key == "self_test":
            prop.value = wrong.model_dump_json()
    tampered = tmp_path / "tampered.onnx"
    save(proto, tampered)

    with pytest.raises(ExportError, match="self-test failed"):
        verify_export(tampered, exported.model, exported.images)


def test_verify_export_needs_256_images(exported: Exported) -> None:
    with pytest.raises(ExportError, match="at least 256 images"):
        verify_export(exported.path, exported.model, exported.images[:255])


def test_verify_export_rejects_an_unloadable_file(exported: Exported, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="onnxruntime cannot load it"):
        verify_export(garbage, exported.model, exported.images)
