"""The job's command line: the accuracy gate, failed checks and bad input keep the old model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnxruntime as ort
import pytest

from model_contract import version_dir
from tests.training_idx import idx_bytes, write_file, write_split_dir
from training import export
from training.__main__ import main
from training.data import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, read_idx_split

OLD_MODEL = b"the model that is serving now"


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory, mnist_offline_dir: Path) -> Path:
    """500 real training digits (50 per class) and 300 test digits, as raw IDX files."""
    train = read_idx_split(mnist_offline_dir, TRAIN_IMAGES, TRAIN_LABELS)
    test = read_idx_split(mnist_offline_dir, TEST_IMAGES, TEST_LABELS)
    train = type(train)(images=train.images[::10], labels=train.labels[::10])
    test = type(test)(images=test.images[:300], labels=test.labels[:300])
    return write_split_dir(tmp_path_factory.mktemp("tiny-mnist"), train, test, gzipped=False)


def _arguments(data_dir: Path, workdir: Path, *extra: str) -> list[str]:
    return [
        "--data-dir",
        str(data_dir),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--seed",
        "3",
        "--output",
        str(workdir / "models" / "mnist.onnx"),
        "--reports-dir",
        str(workdir / "reports"),
        *extra,
    ]


def _existing_model(workdir: Path) -> Path:
    output = workdir / "models" / "mnist.onnx"
    output.parent.mkdir(parents=True)
    output.write_bytes(OLD_MODEL)
    return output


def test_gate_keeps_the_existing_model(
    tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = _existing_model(tmp_path)

    code = main(_arguments(tiny_data_dir, tmp_path, "--min-accuracy", "0.999"))

    assert code == 1
    assert output.read_bytes() == OLD_MODEL
    assert os.listdir(output.parent) == ["mnist.onnx"]  # no temp file left behind
    error = capsys.readouterr().err
    assert "below --min-accuracy 0.999" in error
    assert "left as it was" in error
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["test_accuracy"] < 0.999  # the report still says why


def test_failed_verification_keeps_the_existing_model(
    tiny_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = _existing_model(tmp_path)
    # No real export can agree with Keras to better than zero: the check must fail.
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)

    code = main(_arguments(tiny_data_dir, tmp_path))

    assert code == 1
    assert output.read_bytes() == OLD_MODEL
    assert os.listdir(output.parent) == ["mnist.onnx"]
    assert "export check failed" in capsys.readouterr().err


def test_bad_data_is_one_clear_line(
    tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for source in tiny_data_dir.iterdir():
        (broken / source.name).write_bytes(source.read_bytes())
    labels = broken / TEST_LABELS
    write_file(
        labels, idx_bytes(read_idx_split(tiny_data_dir, TEST_IMAGES, TEST_LABELS).labels)[:-5]
    )
    output = _existing_model(tmp_path)

    code = main(_arguments(broken, tmp_path))

    assert code == 2
    assert output.read_bytes() == OLD_MODEL
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith(f"error: {labels}: truncated")
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "0"], "must be at least 1"),
        (["--min-accuracy", "97"], "must be in [0, 1]"),
        (["--dataset", "cifar10"], "invalid choice"),
        (["--validation-split", "1"], "must be in [0, 1)"),
    ],
)
def test_bad_arguments_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(_arguments(tmp_path, tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err


def test_output_that_is_a_directory_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "models" / "mnist.onnx").mkdir(parents=True)
    assert main(_arguments(tmp_path / "no-data-needed", tmp_path)) == 2
    assert "is a directory" in capsys.readouterr().err


def test_session_model_is_published_with_its_card(trained_model_path: Path) -> None:
    session = ort.InferenceSession(str(trained_model_path), providers=["CPUExecutionProvider"])
    card = json.loads(session.get_modelmeta().custom_metadata_map["model_card"])

    assert (card["epochs"], card["train_size"], card["test_size"]) == (2, 5000, 10000)
    assert card["seed"] == 7
    assert card["test_accuracy"] > 0.8
    reports = trained_model_path.parent / "reports"
    assert (
        json.loads((reports / "metrics.json").read_text())["test_accuracy"]
        == (card["test_accuracy"])
    )


def _repository_arguments(data_dir: Path, repository: Path, *extra: str) -> list[str]:
    arguments = _arguments(data_dir, repository, *extra)
    at = arguments.index("--output")
    arguments[at : at + 4] = ["--repository", str(repository)]  # and no --reports-dir
    return arguments


def test_each_run_publishes_the_next_version_with_its_reports_and_number(
    tiny_data_dir: Path, tmp_path: Path
) -> None:
    for expected in (1, 2):
        assert main(_repository_arguments(tiny_data_dir, tmp_path)) == 0
        directory = version_dir(tmp_path, expected)
        assert sorted(p.name for p in directory.iterdir()) == [
            "confusion_matrix.png",
            "metrics.json",
            "model.onnx",
            "training_curves.png",
        ]
        session = ort.InferenceSession(
            str(directory / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        card = json.loads(session.get_modelmeta().custom_metadata_map["model_card"])
        assert card["version"] == expected
    assert sorted(os.listdir(tmp_path / "mnist")) == ["1", "2"]  # no staging left behind


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--min-accuracy", "0.999"], "below --min-accuracy"), ([], "export check failed")],
)
def test_a_refused_run_publishes_no_version(
    tiny_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    if not extra:
        monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)
    assert main(_repository_arguments(tiny_data_dir, tmp_path, *extra)) == 1
    error = capsys.readouterr().err
    assert message in error
    assert "nothing published" in error
    assert os.listdir(tmp_path / "mnist") == []


def test_repository_and_output_are_one_or_the_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = [*_arguments(tmp_path, tmp_path), "--repository", str(tmp_path)]
    assert main(arguments) == 2
    assert "not allowed with argument" in capsys.readouterr().err
