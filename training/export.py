"""ONNX export with tf2onnx, and a self-check of the exported file against the contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from model_contract import (
    IMAGE_SHAPE,
    INPUT_NAME,
    MODEL_CARD_KEY,
    OUTPUT_NAME,
    SELF_TEST_KEY,
    SUMMARY_KEY,
    ContractError,
    ModelCard,
    ModelSummary,
    SelfTest,
    check_session,
)
from training.model import describe_model

OPSET = 17
BATCH_DIM = "batch"
PARITY_TOLERANCE = 1e-4
MIN_PARITY_IMAGES = 256
BATCH_SIZES_CHECKED = (1, 33)
# cuDNN computes convolutions in TF32 by default: on a GPU the probabilities differ from
# the CPU's by up to ~1e-3 (measured on the 10,000 test digits), so the self-test allows
# twice that; a model with other weights differs by orders of magnitude more.
SELF_TEST_TOLERANCE = 2e-3


class ExportError(Exception):
    """The exported file does not meet the artifact contract."""


def reference_digits(labels: npt.NDArray[np.integer]) -> list[int]:
    """Indices of the first test digit of each class: what the self-test runs."""
    return [int(np.flatnonzero(labels == label)[0]) for label in np.unique(labels)]


def build_self_test(model: keras.Model, images: npt.NDArray[np.float32]) -> SelfTest:
    """``images`` (float32 in [0, 1]) rounded to the grey levels stored, and Keras' answers."""
    grey = np.rint(np.asarray(images, np.float32) * 255).astype(np.uint8)
    # A direct call: a predict() here made verify_export's predict() fail after the tf2onnx
    # conversion ("shape with unknown rank").
    expected = np.asarray(model(grey.astype(np.float32) / 255, training=False))
    return SelfTest.of(grey.reshape(len(grey), *IMAGE_SHAPE[:2]), expected, SELF_TEST_TOLERANCE)


def to_onnx(
    model: keras.Model, summary: ModelSummary, card: ModelCard, self_test: SelfTest
) -> onnx.ModelProto:
    """Convert ``model`` with the contract's names and a dynamic batch, metadata attached."""

    # tf2onnx.convert.from_keras fails on Keras 3 models; a tf.function with a named
    # input signature converts cleanly and fixes the input and output names.
    @tf.function(  # type: ignore[untyped-decorator]  # TensorFlow ships no type hints
        input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name=INPUT_NAME)]
    )
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: model(image, training=False)}

    proto: onnx.ModelProto
    proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=OPSET
    )
    # tf2onnx names the free dimension "unk__N"; one readable name tells readers that
    # input and output batch sizes are the same.
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    proto.doc_string = f"{card.id}: {card.dataset} convnet, test accuracy {card.test_accuracy:.4f}"
    onnx.helper.set_model_props(
        proto,
        {
            SUMMARY_KEY: summary.model_dump_json(),
            MODEL_CARD_KEY: card.model_dump_json(),
            SELF_TEST_KEY: self_test.model_dump_json(),
        },
    )
    onnx.checker.check_model(proto)
    return proto


def save(proto: onnx.ModelProto, path: Path) -> None:
    with path.open("wb") as stream:
        stream.write(proto.SerializeToString())
        stream.flush()
        os.fsync(stream.fileno())


def _check_contract(session: ort.InferenceSession, path: Path, keras_model: keras.Model) -> None:
    """What a server checks before it serves the file, plus the summary against Keras."""
    try:
        metadata = check_session(session)
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: metadata.self_test.pixels()})
    except ContractError as exc:
        raise ExportError(f"{path}: {exc}") from exc
    failure = metadata.self_test.failure(probabilities)
    if failure:
        raise ExportError(f"{path}: {failure}")
    expected = describe_model(keras_model)
    if metadata.summary != expected:
        raise ExportError(
            f"{path}: summary metadata differs from the Keras model: "
            f"{json.dumps(metadata.summary.model_dump())} != {json.dumps(expected.model_dump())}"
        )


def _max_difference(
    session: ort.InferenceSession, keras_model: keras.Model, images: npt.NDArray[np.float32]
) -> float:
    (onnx_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
    keras_out = np.asarray(keras_model.predict(images, batch_size=256, verbose=0))
    if onnx_out.shape != keras_out.shape:
        raise ExportError(
            f"onnxruntime returned shape {onnx_out.shape} for {len(images)} images; "
            f"Keras returned {keras_out.shape}"
        )
    return float(np.max(np.abs(onnx_out - keras_out)))


def verify_export(path: Path, keras_model: keras.Model, images: npt.NDArray[np.float32]) -> float:
    """Check ``path`` against the contract and against ``keras_model``; return the max diff.

    Raises ``ExportError`` on the first failed check.
    """
    if len(images) < MIN_PARITY_IMAGES:
        raise ExportError(f"parity needs at least {MIN_PARITY_IMAGES} images, got {len(images)}")
    images = np.ascontiguousarray(images, dtype=np.float32)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ExportError(f"{path}: onnxruntime cannot load it: {exc}") from exc
    _check_contract(session, path, keras_model)
    worst = _max_difference(session, keras_model, images)
    for size in BATCH_SIZES_CHECKED:
        worst = max(worst, _max_difference(session, keras_model, images[:size]))
    if worst > PARITY_TOLERANCE:
        raise ExportError(
            f"{path}: onnxruntime and Keras disagree by up to {worst:.2e} "
            f"(allowed {PARITY_TOLERANCE:.0e}) on {len(images)} images"
        )
    return worst
