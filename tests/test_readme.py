"""The README's API examples, run as written (shell, curl) against a real server."""

import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.digits import encode
from tests.model_files import publish
from tests.server import REPO_ROOT, running_server
from training.data import RawSplit

README = REPO_ROOT / "README.md"


def shell_examples(route: str = "/predict") -> list[str]:
    """Commands of the README's ```sh blocks that make files or call ``route`` on :8000."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" # ")[0].strip()
            calls_api = command.startswith("curl ") and f"localhost:8000{route}" in command
            makes_a_file = command.startswith("python3 -c") and "> " in command
            if calls_api or (makes_a_file and route == "/predict"):
                commands.append(command)
    return commands


def test_the_readme_has_the_examples_the_issue_asks_for() -> None:
    commands = shell_examples()
    assert any("application/json" in c for c in commands), "no curl example with an array"
    assert any("file=@" in c for c in commands), "no curl example with an image upload"


def test_every_api_example_works(
    trained_model_path: Path, mnist_test_digits: RawSplit, tmp_path: Path
) -> None:
    images, labels = mnist_test_digits.images, mnist_test_digits.labels
    # The files the examples name, made from real test digits.
    (tmp_path / "digit.png").write_bytes(encode(images[0]))
    (tmp_path / "a.png").write_bytes(encode(images[1]))
    (tmp_path / "b.jpg").write_bytes(encode(images[2], "JPEG"))
    (tmp_path / "digits.u8").write_bytes(images[:256].tobytes())
    buffer = io.BytesIO()
    np.save(buffer, (images[:8] / 255).astype(np.float32))
    (tmp_path / "digits.npy").write_bytes(buffer.getvalue())

    with running_server(trained_model_path) as url:
        port = url.rsplit(":", 1)[1]
        for command in shell_examples():
            command = command.replace("localhost:8000", f"127.0.0.1:{port}")
            done = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, (command, done.stderr)
            if not command.startswith("curl"):
                continue
            answer = json.loads(done.stdout)
            digits = [p["digit"] for p in answer["predictions"]]
            if "one.json" in command:
                assert digits == [1], command
            elif "file=@a.png -F file=@b.jpg" in command:
                assert digits == labels[1:3].tolist(), command
            elif "digit.png" in command:
                assert digits == [labels[0]], command
            elif "digits.u8" in command:
                assert len(digits) == 256, command
                assert np.mean(np.asarray(digits) == labels[:256]) > 0.9, command
            elif "digits.npy" in command:
                assert digits == labels[:8].tolist(), command
            else:
                pytest.fail(f"an example this test does not know how to check: {command}")


def test_every_model_repository_example_works(trained_model_path: Path, tmp_path: Path) -> None:
    publish(tmp_path, trained_model_path)
    publish(tmp_path, trained_model_path)
    commands = shell_examples("/v2/repository")
    assert [c.split("/v2/repository")[1].split()[0] for c in commands] == [
        "/index",
        "/models/mnist/load",
        "/models/mnist/load",
        "/models/mnist/unload",
    ]
    with running_server(
        trained_model_path,
        MNIST_MODEL_REPOSITORY=str(tmp_path),
        MNIST_MODEL_CONTROL="1",
        MNIST_WORKERS="1",
    ) as url:
        port = url.rsplit(":", 1)[1]
        answers = []
        for command in commands:
            command = command.replace("localhost:8000", f"127.0.0.1:{port}")
            done = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, (command, done.stderr)
            answers.append(json.loads(done.stdout))
    index, specific, configured, unloaded = answers
    assert [(e["version"], e["state"]) for e in index] == [("1", "UNAVAILABLE"), ("2", "READY")]
    assert specific == {"name": "mnist", "ready_versions": ["1"]}
    assert configured == {"name": "mnist", "ready_versions": ["2"]}
    assert unloaded == {"name": "mnist", "ready_versions": []}
