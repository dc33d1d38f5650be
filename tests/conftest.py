"""Shared pytest fixtures. Each part of the project keeps its fixtures in its own section."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.data import TEST_IMAGES, TEST_LABELS, RawSplit, read_idx_split

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------
# Training fixtures: the offline MNIST data and a model trained once per test session.
# --------------------------------------------------------------------------------------

OFFLINE_DATA_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _idx_dir(variable: str, default: str, what: str) -> Path:
    """The IDX directory $``variable`` names, else <repo>/../shared/data/``default``.

    Absent data fails the tests that need it (CI must provide it); it never skips them.
    """
    configured = os.environ.get(variable)
    directory = Path(configured) if configured else REPO_ROOT.parent / "shared/data" / default
    missing = [name for name in OFFLINE_DATA_FILES if not (directory / name).is_file()]
    if missing:
        pytest.fail(
            f"{what} not found: {directory} lacks {', '.join(missing)}. "
            f"Set {variable} to a directory holding the four IDX .gz files.",
            pytrace=False,
        )
    return directory


@pytest.fixture(scope="session")
def mnist_offline_dir() -> Path:
    """5,000 real training digits and the official 10,000 test digits, for fast tests."""
    return _idx_dir("MNIST_OFFLINE_DATA", "mnist-offline", "offline MNIST data")


@pytest.fixture(scope="session")
def mnist_full_dir() -> Path:
    """The complete official MNIST (60,000 + 10,000), where the seed's accuracy must show."""
    return _idx_dir("MNIST_FULL_DATA", "mnist", "full MNIST")


@pytest.fixture(scope="session")
def trained_model_path(tmp_path_factory: pytest.TempPathFactory, mnist_offline_dir: Path) -> Path:
    """A real model trained once per session (2 epochs, 5,000 digits); its ONNX path.

    Reports land in the ``reports`` folder next to the model.
    """
    given = os.environ.get("MNIST_TEST_MODEL")
    if given:
        # A machine without TensorFlow (the lent GPU one) tests a model trained elsewhere.
        if not Path(given).is_file():
            pytest.fail(f"MNIST_TEST_MODEL={given} is not a file", pytrace=False)
        return Path(given)
    from training.__main__ import main  # imported late: TensorFlow takes seconds to load

    directory = tmp_path_factory.mktemp("trained-model")
    output = directory / "mnist.onnx"
    code = main(
        [
            "--data-dir",
            str(mnist_offline_dir),
            "--epochs",
            "2",
            "--seed",
            "7",
            "--output",
            str(output),
            "--reports-dir",
            str(directory / "reports"),
        ]
    )
    if code != 0 or not output.is_file():
        pytest.fail(f"training the session model failed (exit code {code})", pytrace=False)
    return output


# --------------------------------------------------------------------------------------
# Service fixtures: the real MNIST test digits.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mnist_test_digits(mnist_offline_dir: Path) -> RawSplit:
    """The official 10,000 MNIST test digits: uint8 (N, 28, 28) and their labels."""
    return read_idx_split(mnist_offline_dir, TEST_IMAGES, TEST_LABELS)
