"""The contract between the training job and the service: one ONNX file, in one repository.

Training writes what is described here and checks its own output against it; the service
refuses any file that breaks it. Both import this module, so the names, shapes, metadata
keys and documents below exist once. It needs pydantic, numpy and (for ``check_session``)
an onnxruntime session, never TensorFlow.

The repository follows Triton's and TF Serving's layout: ``REPO/mnist/<version>/model.onnx``
with positive integer versions, each version directory published by one atomic rename and
never changed after.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MODEL_NAME = "mnist"
MODEL_FILENAME = "model.onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
IMAGE_SHAPE = (28, 28, 1)
CLASSES = 10

SUMMARY_KEY = "summary"
MODEL_CARD_KEY = "model_card"
SELF_TEST_KEY = "self_test"

_VERSION_NAME = re.compile(r"[1-9][0-9]{0,17}")


class ContractError(Exception):
    """A model file that breaks the contract; the message says which part and how."""


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LayerSummary(_Document):
    name: str
    type: str
    output_shape: list[int | None] = Field(description="Batch dimension as null.")
    params: int = Field(ge=0)


class ModelSummary(_Document):
    """The Keras layer table, as metadata ``summary``."""

    layers: list[LayerSummary]
    total_params: int = Field(ge=0)
    trainable_params: int = Field(ge=0)
    non_trainable_params: int = Field(ge=0)


class LibraryVersions(_Document):
    tensorflow: str
    keras: str
    tf2onnx: str
    onnx: str
    python: str


class ModelCard(_Document):
    """What was trained, on what, how well and when, as metadata ``model_card``."""

    id: str = Field(description="<dataset>-convnet-<UTC timestamp>-<sha256 of weights, 8 hex>")
    version: int | None = Field(
        None, ge=1, description="The repository version it was published as; null for a file."
    )
    dataset: str
    class_names: list[str]
    train_size: int = Field(ge=1)
    test_size: int = Field(ge=1)
    validation_split: float = Field(ge=0.0, lt=1.0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: str
    loss: str
    test_accuracy: float = Field(ge=0.0, le=1.0)
    test_loss: float = Field(ge=0.0)
    training_seconds: float = Field(ge=0.0)
    trained_at: str = Field(description="ISO 8601, UTC.")
    library_versions: LibraryVersions
    git_commit: str | None
    seed: int


class SelfTest(_Document):
    """Reference digits and the probabilities the trained model gave them, as ``self_test``.

    A server runs them through the file it loaded before that file takes traffic: a model
    whose answers differ (other weights, a broken conversion, a device that computes
    wrongly) is refused rather than served.
    """

    images: str = Field(description="base64 of uint8 grey levels, shape (N, 28, 28), row-major.")
    probabilities: list[list[float]] = Field(min_length=1, description="(N, 10), expected.")
    tolerance: float = Field(gt=0, description="Largest allowed |actual - expected|.")

    def pixels(self) -> np.ndarray:
        """The reference digits as the model's input: float32 (N, 28, 28, 1) in [0, 1]."""
        raw = np.frombuffer(base64.b64decode(self.images), np.uint8)
        count = len(self.probabilities)
        if raw.size != count * int(np.prod(IMAGE_SHAPE)):
            raise ContractError(
                f"metadata '{SELF_TEST_KEY}' holds {raw.size} pixels for {count} expected answers"
            )
        return (raw.astype(np.float32) / 255).reshape(count, *IMAGE_SHAPE)

    def failure(self, probabilities: np.ndarray) -> str | None:
        """Why ``probabilities`` (the model's answers to ``pixels()``) fail, or None."""
        expected = np.asarray(self.probabilities, np.float32)
        if probabilities.shape != expected.shape:
            return f"self-test answers have shape {probabilities.shape}, expected {expected.shape}"
        worst = float(np.max(np.abs(probabilities - expected)))
        if not worst <= self.tolerance:  # NaN fails too
            return (
                f"self-test failed: answers differ from the training job's by up to {worst:.2e} "
                f"(allowed {self.tolerance:.0e}) on {len(expected)} reference digits"
            )
        return None

    @classmethod
    def of(cls, digits: np.ndarray, probabilities: np.ndarray, tolerance: float) -> SelfTest:
        """From uint8 (N, 28, 28) digits and the model's float (N, 10) answers to them."""
        grey = np.ascontiguousarray(digits, np.uint8).reshape(len(digits), *IMAGE_SHAPE[:2])
        return cls(
            images=base64.b64encode(grey.tobytes()).decode("ascii"),
            probabilities=np.asarray(probabilities, np.float64).tolist(),
            tolerance=tolerance,
        )


class ModelMetadata(_Document):
    summary: ModelSummary
    card: ModelCard
    self_test: SelfTest


class Session(Protocol):
    """What the contract reads of an ``onnxruntime.InferenceSession``."""

    def get_inputs(self) -> list[Any]: ...
    def get_outputs(self) -> list[Any]: ...
    def get_modelmeta(self) -> Any: ...


def check_signature(session: Session) -> None:
    """Input ``image`` float32 [N, 28, 28, 1] and output ``probabilities`` float32 [N, 10]."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ContractError(
            f"expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', found inputs "
            f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}"
        )
    for tensor, tail in ((inputs[0], list(IMAGE_SHAPE)), (outputs[0], [CLASSES])):
        batch, *rest = tensor.shape
        if tensor.type != "tensor(float)" or rest != tail or isinstance(batch, int):
            wanted = ", ".join(map(str, tail))
            raise ContractError(
                f"{tensor.name} must be float32 [N, {wanted}] with a dynamic N, "
                f"is {tensor.type} {tensor.shape}"
            )


def read_metadata(session: Session) -> ModelMetadata:
    """The model's ``summary``, ``model_card`` and ``self_test``, checked against their schemas."""
    props: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
    documents: dict[str, Any] = {}
    keys = {"summary": SUMMARY_KEY, "card": MODEL_CARD_KEY, "self_test": SELF_TEST_KEY}
    for field, key in keys.items():
        if key not in props:
            raise ContractError(f"metadata '{key}' is missing: export the model with mnist-train")
        try:
            documents[field] = json.loads(props[key])
        except json.JSONDecodeError as exc:
            raise ContractError(f"metadata '{key}' is not JSON ({exc})") from None
    try:
        return ModelMetadata.model_validate(documents)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ContractError(f"metadata does not match its schema: {problems}") from None


def check_session(session: Session) -> ModelMetadata:
    """The whole static contract: the signature, then the metadata."""
    check_signature(session)
    return read_metadata(session)


# --- the repository layout ----------------------------------------------------------------


def model_dir(repository: Path) -> Path:
    return repository / MODEL_NAME


def version_dir(repository: Path, version: int) -> Path:
    return model_dir(repository) / str(version)


def parse_version(name: str) -> int | None:
    """A version directory's number; None for anything else (dot files, staging, junk)."""
    return int(name) if _VERSION_NAME.fullmatch(name) else None


def published_versions(repository: Path) -> dict[int, Path]:
    """Every version directory in ``repository`` and the model file it should hold."""
    try:
        entries = list(model_dir(repository).iterdir())
    except FileNotFoundError:
        return {}
    versions = {}
    for entry in entries:
        version = parse_version(entry.name)
        if version is not None and entry.is_dir():
            versions[version] = entry / MODEL_FILENAME
    return dict(sorted(versions.items()))
