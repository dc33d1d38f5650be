"""Train the reference convnet, report on it, and publish it as one verified ONNX model.

Reads like keras-io's mnist_convnet.py (data, model, fit, evaluate), then does what a
production job adds: a report, an accuracy gate, the export, a self-check, and an atomic
publish, either as the next version of a model repository (``--repository``, which a
running service picks up by itself) or as one file (``--output``). A run that fails
anywhere publishes nothing and leaves what was published before untouched.

Exit codes: 0 published; 1 accuracy gate or export check failed; 2 bad data or usage.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from model_contract import MODEL_FILENAME, model_dir
from training.data import DATASETS, Dataset, DatasetError, hold_out, load_dataset
from training.publish import atomic_output, publish_version

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
PARITY_IMAGES = 1024


def say(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(upper_inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not (0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0):
            bound = "1]" if upper_inclusive else "1)"
            raise argparse.ArgumentTypeError(f"must be in [0, {bound}, got {value}")
        return value

    parse.__name__ = "fraction"
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-train",
        description="Train the MNIST convnet, write a report, and export a verified ONNX model.",
    )
    parser.add_argument("--dataset", choices=DATASETS, default="mnist")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="directory of standard IDX files (gzipped or not); default: download with Keras",
    )
    parser.add_argument("--epochs", type=_positive_int, default=5)
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument(
        "--validation-split",
        type=_fraction(upper_inclusive=False),
        default=0.0,
        help="random share of the training images held out to validate each epoch",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed, logged")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="model repository to publish the next version into: DIR/mnist/<version>/, with "
        "model.onnx and the reports",
    )
    target.add_argument(
        "--output",
        type=Path,
        default=None,
        help="one ONNX file to replace instead (default without --repository: models/mnist.onnx)",
    )
    parser.add_argument(
        "--reports-dir",
        type=Path,
        default=None,
        help="where the reports go too (default: the version directory with --repository, "
        "else reports/)",
    )
    parser.add_argument(
        "--min-accuracy",
        type=_fraction(upper_inclusive=True),
        default=0.0,
        help="refuse to publish a model whose test accuracy is lower (0-1)",
    )
    args = parser.parse_args(argv)
    if args.repository is None:
        args.output = args.output or Path("models/mnist.onnx")
        args.reports_dir = args.reports_dir or Path("reports")
    return args


def _check_writable(directory: Path, what: str) -> str | None:
    """Why ``directory`` cannot take our files, or None; checked before minutes of training."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{what} {directory} cannot be created: {exc.strerror or exc}"
    if not os.access(directory, os.W_OK):
        return f"{what} {directory} is not writable"
    return None


def _preflight(args: argparse.Namespace) -> str | None:
    if args.repository is not None:
        problem = _check_writable(model_dir(args.repository), "--repository model directory")
    elif args.output.is_dir():
        return f"--output {args.output} is a directory; give a file path such as models/mnist.onnx"
    else:
        problem = _check_writable(args.output.parent, "--output directory")
    if problem is None and args.reports_dir is not None:
        problem = _check_writable(args.reports_dir, "--reports-dir")
    return problem


def epoch_log(epochs: int) -> object:
    """A callback printing one plain line per epoch, readable in CI logs unlike progress bars."""
    import keras  # loaded already by train_and_publish

    started = 0.0

    def begin(epoch: int, logs: dict[str, float] | None = None) -> None:
        nonlocal started
        started = time.perf_counter()

    def end(epoch: int, logs: dict[str, float] | None = None) -> None:
        figures = ", ".join(f"{key} {value:.4f}" for key, value in (logs or {}).items())
        say(f"epoch {epoch + 1}/{epochs} done in {time.perf_counter() - started:.1f} s: {figures}")

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or --help already
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    problem = _preflight(args)
    if problem:
        fail(problem)
        return EXIT_USAGE
    seed: int = args.seed if args.seed is not None else secrets.randbelow(2**31)
    say(f"seed {seed}")

    # Data
    try:
        data = load_dataset(args.dataset, args.data_dir)
    except DatasetError as exc:
        fail(str(exc))
        return EXIT_USAGE
    return train_and_publish(args, data, seed)


def train_and_publish(args: argparse.Namespace, data: Dataset, seed: int) -> int:
    train, validation = hold_out(data.train, args.validation_split, seed)
    say(
        f"{data.name} from {data.source}: {len(train):,} training, "
        f"{len(validation) if validation is not None else 0:,} validation, "
        f"{len(data.test):,} test images; loading TensorFlow"
    )
    # TensorFlow takes seconds to import: loading it only now lets --help, bad arguments
    # and bad data answer at once instead of after that wait.
    import keras

    from training.card import build_model_card
    from training.export import (
        ExportError,
        build_self_test,
        reference_digits,
        save,
        to_onnx,
        verify_export,
    )
    from training.model import LOSS, OPTIMIZER, build_model, describe_model
    from training.report import build_metrics, write_report

    keras.utils.set_random_seed(seed)

    # Model
    model = build_model()
    model.summary()

    # Train
    started = time.perf_counter()
    history = model.fit(
        train.images,
        train.one_hot,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(validation.images, validation.one_hot) if validation is not None else None,
        verbose=1 if sys.stdout.isatty() else 2,
        callbacks=[epoch_log(args.epochs)],
    )
    training_seconds = time.perf_counter() - started
    trained_at = datetime.now(UTC)

    # Evaluate
    test_loss, test_accuracy = (
        float(value) for value in model.evaluate(data.test.images, data.test.one_hot, verbose=0)
    )
    say(
        f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f} "
        f"({len(data.test):,} images); training took {training_seconds:.1f} s"
    )

    # Report
    metrics = build_metrics(
        dataset=data.name,
        class_names=data.class_names,
        true_labels=data.test.labels,
        probabilities=model.predict(data.test.images, batch_size=1024, verbose=0),
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        history=history.history,
        training_seconds=training_seconds,
    )
    if args.reports_dir is not None:
        for path in write_report(metrics, args.reports_dir):
            say(f"wrote {path}")
    published = "nothing published" if args.repository else f"{args.output} left as it was"

    # Gate: checked before export, so a worse model is never published
    if test_accuracy < args.min_accuracy:
        fail(
            f"test accuracy {test_accuracy:.4f} is below --min-accuracy {args.min_accuracy}; "
            f"not exporting, {published}"
        )
        return EXIT_FAILED

    # Export, verify, publish
    def export(path: Path, version: int | None) -> float:
        """Write the verified model to ``path``; return its largest difference from Keras."""
        card = build_model_card(
            model=model,
            version=version,
            dataset=data.name,
            class_names=list(data.class_names),
            train_size=len(train),
            test_size=len(data.test),
            validation_split=args.validation_split,
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=OPTIMIZER,
            loss=LOSS,
            test_accuracy=test_accuracy,
            test_loss=test_loss,
            training_seconds=training_seconds,
            trained_at=trained_at,
            seed=seed,
        )
        say(f"exporting {card.id}" + (f" as version {version}" if version else ""))
        save(to_onnx(model, describe_model(model), card, self_test), path)
        return verify_export(path, model, data.test.images[:PARITY_IMAGES])

    self_test = build_self_test(model, data.test.images[reference_digits(data.test.labels)])
    differences: list[float] = []
    try:
        if args.repository is not None:

            def build(directory: Path, version: int) -> None:
                differences.append(export(directory / MODEL_FILENAME, version))
                write_report(metrics, directory)

            version = publish_version(args.repository, build)
            target = model_dir(args.repository) / str(version) / MODEL_FILENAME
        else:
            with atomic_output(args.output) as staged:
                differences.append(export(staged, None))
            target = args.output
    except ExportError as exc:
        fail(f"export check failed, {published}: {exc}")
        return EXIT_FAILED
    except OSError as exc:
        fail(f"cannot publish to {args.repository or args.output}: {exc}")
        return EXIT_FAILED
    say(
        f"published {target} ({target.stat().st_size:,} bytes); max |onnx - keras| = "
        f"{differences[-1]:.1e} on {min(len(data.test), PARITY_IMAGES)} images"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
