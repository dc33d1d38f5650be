"""The metrics report the training job writes beside each model.

The documents inside the ONNX file (summary, model card, self-test) are the service's
contract too, so they live in ``model_contract``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
