"""The JSON documents the training job writes: ONNX metadata and the metrics report.

``ModelSummary`` and ``ModelCard`` travel inside the ONNX file as the metadata_props
``summary`` and ``model_card``; the service reads them, so their keys are a contract.
This module imports only pydantic, so the service may use it without TensorFlow.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SUMMARY_KEY = "summary"
MODEL_CARD_KEY = "model_card"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LayerSummary(_Document):
    name: str
    type: str
    output_shape: list[int | None] = Field(description="Batch dimension as null.")
    params: int = Field(ge=0)


class ModelSummary(_Document):
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
    id: str = Field(description="<dataset>-convnet-<UTC timestamp>-<sha256 of weights, 8 hex>")
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


class ClassMetrics(_Document):
    label: int
    name: str
    precision: float = Field(ge=0.0, le=1.0)
    recall: float = Field(ge=0.0, le=1.0)
    support: int = Field(ge=0, description="Test images whose true label is this class.")


class Metrics(_Document):
    dataset: str
    test_size: int
    test_accuracy: float
    test_loss: float
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]] = Field(description="Rows: true label; columns: predicted.")
    history: dict[str, list[float]] = Field(description="Keras fit history, one value per epoch.")
    training_seconds: float
