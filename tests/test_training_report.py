"""The evaluation report: metric arithmetic, metrics.json and the two pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.report import build_metrics, confusion_matrix, per_class_metrics, write_report
from training.schemas import Metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_rows_are_true_labels() -> None:
    true = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(true, predicted, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_precision_and_recall_per_class() -> None:
    matrix = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]], dtype=np.int64)
    metrics = per_class_metrics(matrix, ["a", "b", "c"])

    assert [m.name for m in metrics] == ["a", "b", "c"]
    assert [m.precision for m in metrics] == pytest.approx([0.5, 0.5, 1.0])
    assert [m.recall for m in metrics] == pytest.approx([0.5, 1.0, 2 / 3])
    assert [m.support for m in metrics] == [2, 1, 3]


def test_class_never_predicted_has_zero_precision_not_nan() -> None:
    matrix = np.array([[2, 0], [1, 0]], dtype=np.int64)
    metrics = per_class_metrics(matrix, ["x", "y"])
    assert (metrics[1].precision, metrics[1].recall) == (0.0, 0.0)


def _metrics(with_validation: bool) -> Metrics:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    probabilities = rng.random((300, 10))
    probabilities[np.arange(300), labels] += 0.8  # mostly right, some mistakes
    history = {"loss": [1.2, 0.6, 0.4], "accuracy": [0.6, 0.8, 0.9]}
    if with_validation:
        history |= {"val_loss": [1.0, 0.7, 0.5], "val_accuracy": [0.7, 0.8, 0.85]}
    return build_metrics(
        dataset="mnist",
        class_names=[str(d) for d in range(10)],
        true_labels=labels,
        probabilities=probabilities,
        test_loss=0.45,
        test_accuracy=float((probabilities.argmax(axis=1) == labels).mean()),
        history=history,
        training_seconds=3.5,
    )


def test_build_metrics_is_consistent() -> None:
    metrics = _metrics(with_validation=False)
    matrix = np.array(metrics.confusion_matrix)

    assert matrix.sum() == 300
    assert np.trace(matrix) / 300 == pytest.approx(metrics.test_accuracy)
    assert [m.support for m in metrics.per_class] == [30] * 10


@pytest.mark.parametrize("with_validation", [False, True])
def test_write_report_files(tmp_path: Path, with_validation: bool) -> None:
    metrics = _metrics(with_validation)
    paths = write_report(metrics, tmp_path / "reports")

    assert [p.name for p in paths] == [
        "metrics.json",
        "training_curves.png",
        "confusion_matrix.png",
    ]
    stored = json.loads(paths[0].read_text())
    assert Metrics.model_validate(stored) == metrics
    assert {
        "test_accuracy",
        "test_loss",
        "per_class",
        "confusion_matrix",
        "history",
        "training_seconds",
    } <= stored.keys()
    for picture in paths[1:]:
        content = picture.read_bytes()
        assert content.startswith(PNG_SIGNATURE)
        assert len(content) > 20_000  # a drawn figure, not an empty canvas
