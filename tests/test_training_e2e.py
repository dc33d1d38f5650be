"""End to end: `python -m training` on the offline data, as CI and a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from training.data import TEST_IMAGES, TEST_LABELS, prepare, read_idx_split

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_python_m_training_publishes_a_verified_model(
    mnist_offline_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "models" / "mnist.onnx"
    reports = tmp_path / "reports"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "--data-dir",
            str(mnist_offline_dir),
            "--epochs",
            "1",
            "--seed",
            "11",
            "--output",
            str(output),
            "--reports-dir",
            str(reports),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Total params: 93,322" in result.stdout  # model.summary() is printed
    assert "epoch 1/1 done" in result.stdout
    assert f"published {output}" in result.stdout

    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    card, summary = json.loads(meta["model_card"]), json.loads(meta["summary"])
    assert (card["dataset"], card["train_size"], card["test_size"]) == ("mnist", 5000, 10000)
    assert (card["epochs"], card["batch_size"], card["seed"]) == (1, 64, 11)
    assert summary["total_params"] == 93_322

    # The published model classifies the real test digits as well as the job reported.
    test = prepare(read_idx_split(mnist_offline_dir, TEST_IMAGES, TEST_LABELS))
    (probabilities,) = session.run(["probabilities"], {"image": test.images})
    accuracy = float((probabilities.argmax(axis=1) == test.labels).mean())
    assert accuracy == pytest.approx(card["test_accuracy"], abs=1e-3)

    metrics = json.loads((reports / "metrics.json").read_text())
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
    assert len(metrics["history"]["loss"]) == 1
    for picture in ("training_curves.png", "confusion_matrix.png"):
        assert (reports / picture).stat().st_size > 20_000
