"""Evaluation report: metrics.json, training_curves.png and confusion_matrix.png.

The metric functions are pure numpy; the plots use matplotlib's Agg backend so the job
runs on machines without a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on training machines

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.colors import PowerNorm

from training.schemas import ClassMetrics, Metrics

METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"


def confusion_matrix(
    true: npt.NDArray[np.integer], predicted: npt.NDArray[np.integer], classes: int
) -> npt.NDArray[np.int64]:
    """Counts with rows = true label and columns = predicted label."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (true.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def per_class_metrics(
    matrix: npt.NDArray[np.int64], class_names: Sequence[str]
) -> list[ClassMetrics]:
    """Precision and recall per class; 0.0 where a class was never predicted or never seen."""
    hits = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    return [
        ClassMetrics(
            label=label,
            name=name,
            precision=float(hits[label] / predicted[label]) if predicted[label] else 0.0,
            recall=float(hits[label] / actual[label]) if actual[label] else 0.0,
            support=int(actual[label]),
        )
        for label, name in enumerate(class_names)
    ]


def build_metrics(
    *,
    dataset: str,
    class_names: Sequence[str],
    true_labels: npt.NDArray[np.integer],
    probabilities: npt.NDArray[np.floating],
    test_loss: float,
    test_accuracy: float,
    history: Mapping[str, Sequence[float]],
    training_seconds: float,
) -> Metrics:
    matrix = confusion_matrix(true_labels, probabilities.argmax(axis=1), len(class_names))
    return Metrics(
        dataset=dataset,
        test_size=int(true_labels.shape[0]),
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        per_class=per_class_metrics(matrix, class_names),
        confusion_matrix=matrix.tolist(),
        history={key: [float(value) for value in values] for key, values in history.items()},
        training_seconds=training_seconds,
    )


def plot_training_curves(metrics: Metrics, path: Path) -> None:
    history = metrics.history
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    panels = (
        ("loss", "Loss (categorical cross-entropy)", metrics.test_loss),
        ("accuracy", "Accuracy", metrics.test_accuracy),
    )
    for axis, (key, title, test_value) in zip(axes, panels, strict=True):
        if key in history:
            axis.plot(epochs, history[key], marker="o", color="tab:blue", label="training")
        if f"val_{key}" in history:
            axis.plot(
                epochs, history[f"val_{key}"], marker="s", color="tab:orange", label="validation"
            )
        axis.axhline(
            test_value,
            linestyle="--",
            color="tab:green",
            label=f"test after training: {test_value:.4f}",
        )
        axis.set_title(title)
        axis.set_xlabel("Epoch")
        axis.set_ylabel(key.capitalize())
        axis.set_xticks(epochs)
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.suptitle(f"{metrics.dataset}: training curves", fontsize=13)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_confusion_matrix(metrics: Metrics, path: Path) -> None:
    matrix = np.asarray(metrics.confusion_matrix)
    names = [entry.name for entry in metrics.per_class]
    # Colour by the share of each true class, on a square-root scale, so the few
    # mistakes stay visible next to diagonals that hold ~99% of each row.
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = max(6.5, 0.75 * len(names) + 1.5)
    figure, axis = plt.subplots(figsize=(size + 1.2, size), constrained_layout=True)
    image = axis.imshow(shares, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0))
    for true in range(matrix.shape[0]):
        for predicted in range(matrix.shape[1]):
            count = int(matrix[true, predicted])
            colour = "white" if shares[true, predicted] > 0.45 else "black"
            axis.text(
                predicted,
                true,
                str(count),
                ha="center",
                va="center",
                fontsize=9,
                color=colour if count else "lightgrey",
            )
    ticks = np.arange(len(names))
    slanted = max(len(name) for name in names) > 2  # Fashion-MNIST's names would overlap
    axis.set_xticks(
        ticks, names, rotation=45 if slanted else 0, ha="right" if slanted else "center"
    )
    axis.set_yticks(ticks, names)
    axis.set_xlabel("Predicted label")
    axis.set_ylabel("True label")
    axis.set_title(
        f"{metrics.dataset}: confusion matrix on {metrics.test_size:,} test images "
        f"(accuracy {metrics.test_accuracy:.2%})"
    )
    colourbar = figure.colorbar(image, ax=axis, shrink=0.8)
    colourbar.set_label("Share of the true class")
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(metrics: Metrics, reports_dir: Path) -> list[Path]:
    """Write the three report files and return their paths."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    paths = [reports_dir / METRICS_FILE, reports_dir / CURVES_FILE, reports_dir / CONFUSION_FILE]
    paths[0].write_text(metrics.model_dump_json(indent=2) + "\n", encoding="utf-8")
    plot_training_curves(metrics, paths[1])
    plot_confusion_matrix(metrics, paths[2])
    return paths
