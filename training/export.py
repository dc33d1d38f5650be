"""ONNX export with tf2onnx, written atomically, and a self-check of the exported file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx
from pydantic import ValidationError

from training.model import describe_model
from training.schemas import (
    INPUT_NAME,
    MODEL_CARD_KEY,
    OUTPUT_NAME,
    SUMMARY_KEY,
    ModelCard,
    ModelSummary,
)

OPSET = 17
BATCH_DIM = "batch"
PARITY_TOLERANCE = 1e-4
MIN_PARITY_IMAGES = 256
BATCH_SIZES_CHECKED = (1, 33)


class ExportError(Exception):
    """The exported file does not meet the artifact contract."""


def to_onnx(model: keras.Model, summary: ModelSummary, card: ModelCard) -> onnx.ModelProto:
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
        {SUMMARY_KEY: summary.model_dump_json(), MODEL_CARD_KEY: card.model_dump_json()},
    )
    onnx.checker.check_model(proto)
    return proto


def save(proto: onnx.ModelProto, path: Path) -> None:
    with path.open("wb") as stream:
        stream.write(proto.SerializeToString())
        stream.flush()
        os.fsync(stream.fileno())


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit it replaces ``path`` in one step.

    On any exception the temp file is removed and ``path`` keeps its old content, so a
    reader never sees a half-written or unverified model.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    staged = Path(name)
    try:
        # mkstemp makes the file private (0600); a model must be readable like any file
        # the user creates, e.g. by a service running as another user.
        umask = os.umask(0)
        os.umask(umask)
        staged.chmod(0o666 & ~umask)
        yield staged
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def _metadata(meta: ort.ModelMetadata, key: str, path: Path) -> str:
    props: dict[str, str] = dict(meta.custom_metadata_map)
    if key not in props:
        raise ExportError(f"{path}: metadata_props has no {key!r} (found: {sorted(props)})")
    return props[key]


def _check_io(session: ort.InferenceSession, path: Path) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ExportError(
            f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, found "
            f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}"
        )
    for value, tail in ((inputs[0], [28, 28, 1]), (outputs[0], [10])):
        if value.type != "tensor(float)":
            raise ExportError(f"{path}: {value.name} is {value.type}, expected tensor(float)")
        batch, *rest = value.shape
        if isinstance(batch, int) or rest != tail:
            raise ExportError(
                f"{path}: {value.name} has shape {value.shape}, expected [N, "
                f"{', '.join(map(str, tail))}] with a dynamic N"
            )


def _check_summary(session: ort.InferenceSession, path: Path, keras_model: keras.Model) -> None:
    meta = session.get_modelmeta()
    try:
        summary = ModelSummary.model_validate_json(_metadata(meta, SUMMARY_KEY, path))
        ModelCard.model_validate_json(_metadata(meta, MODEL_CARD_KEY, path))
    except ValidationError as exc:
        raise ExportError(f"{path}: metadata does not match its schema: {exc}") from exc
    expected = describe_model(keras_model)
    if summary != expected:
        raise ExportError(
            f"{path}: summary metadata differs from the Keras model: "
            f"{json.dumps(summary.model_dump())} != {json.dumps(expected.model_dump())}"
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
    _check_io(session, path)
    _check_summary(session, path, keras_model)
    worst = _max_difference(session, keras_model, images)
    for size in BATCH_SIZES_CHECKED:
        worst = max(worst, _max_difference(session, keras_model, images[:size]))
    if worst > PARITY_TOLERANCE:
        raise ExportError(
            f"{path}: onnxruntime and Keras disagree by up to {worst:.2e} "
            f"(allowed {PARITY_TOLERANCE:.0e}) on {len(images)} images"
        )
    return worst
