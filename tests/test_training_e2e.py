"""End to end: `python -m training --repository` on the full official MNIST, as CI and a user
would run it, while a reader scans the repository the way a serving worker does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from model_contract import MODEL_FILENAME, published_versions, read_metadata
from training.data import TEST_IMAGES, TEST_LABELS, prepare, read_idx_split

REPO_ROOT = Path(__file__).resolve().parent.parent
# The seed's result on full MNIST (measured 0.9918 with seed 1 on these files).
GATE = 0.99


class Scanner(threading.Thread):
    """Scans the repository every few milliseconds and keeps what each scan saw."""

    def __init__(self, repository: Path):
        super().__init__(daemon=True)
        self.repository = repository
        self.stop = threading.Event()
        self.scans = 0
        self.incomplete: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.002):
            self.scans += 1
            for version, path in published_versions(self.repository).items():
                try:
                    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    read_metadata(session)
                except Exception as exc:
                    self.incomplete.append(f"version {version}: {exc}")


@pytest.mark.e2e
def test_training_on_full_mnist_publishes_a_verified_version_atomically(
    mnist_full_dir: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    scanner = Scanner(repository)
    scanner.start()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "training",
                "--data-dir",
                str(mnist_full_dir),
                "--epochs",
                "5",
                "--seed",
                "1",
                "--min-accuracy",
                str(GATE),
                "--repository",
                str(repository),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    finally:
        scanner.stop.set()
        scanner.join(timeout=30)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Total params: 93,322" in result.stdout  # model.summary() is printed
    assert "epoch 5/5 done" in result.stdout
    version_dir = repository / "mnist" / "1"
    assert f"published {version_dir / MODEL_FILENAME}" in result.stdout

    # The reader never saw a version directory without its complete, valid model.
    assert scanner.scans > 100
    assert scanner.incomplete == []

    session = ort.InferenceSession(
        str(version_dir / MODEL_FILENAME), providers=["CPUExecutionProvider"]
    )
    meta = session.get_modelmeta().custom_metadata_map
    card, summary = json.loads(meta["model_card"]), json.loads(meta["summary"])
    assert (card["dataset"], card["train_size"], card["test_size"]) == ("mnist", 60_000, 10_000)
    assert (card["epochs"], card["batch_size"], card["seed"], card["version"]) == (5, 64, 1, 1)
    assert summary["total_params"] == 93_322
    assert card["test_accuracy"] >= GATE

    # The published model classifies the real test digits as well as the job reported.
    test = prepare(read_idx_split(mnist_full_dir, TEST_IMAGES, TEST_LABELS))
    (probabilities,) = session.run(["probabilities"], {"image": test.images})
    accuracy = float((probabilities.argmax(axis=1) == test.labels).mean())
    assert accuracy == pytest.approx(card["test_accuracy"], abs=1e-3)

    metrics = json.loads((version_dir / "metrics.json").read_text())
    assert {
        "test_accuracy",
        "test_loss",
        "per_class",
        "confusion_matrix",
        "history",
        "training_seconds",
    } <= metrics.keys()
    assert metrics["test_accuracy"] == card["test_accuracy"]
    assert np.array(metrics["confusion_matrix"]).sum() == 10_000
    assert len(metrics["history"]["loss"]) == 5
    for picture in ("training_curves.png", "confusion_matrix.png"):
        assert (version_dir / picture).stat().st_size > 20_000
    print(f"full MNIST, 5 epochs, seed 1: test accuracy {card['test_accuracy']:.4f}")
