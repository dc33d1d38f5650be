"""The stack as a user starts it: `docker compose up` trains into the repository volume,
then serves; `docker compose run --rm train` publishes a new version the API takes up.

Builds the images, brings the stack up with tests/compose.test.yml (host networking and the
full official MNIST, for machines without Docker Hub or bridge access), talks to the API on
127.0.0.1, and always removes the stack and its volumes afterwards. The Docker engine is a
requirement, not an option: without it these tests fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.digits import encode
from training.data import RawSplit

REPO_ROOT = Path(__file__).resolve().parent.parent
OVERRIDE = REPO_ROOT / "tests" / "compose.test.yml"
# A cold build downloads TensorFlow and compiles its bytecode: minutes on two cores.
UP_TIMEOUT_S = 1500
DOWN_TIMEOUT_S = 180
TEST_EPOCHS = 5  # the override's MNIST_EPOCHS
TEST_SEED = "1"  # the override's MNIST_SEED
GATE = 0.99  # the override's MNIST_MIN_ACCURACY
POLL_S = 1.0  # the override's MNIST_REPOSITORY_POLL_S
TRAIN_TIMEOUT_S = 900
# The service layers may add this much to python:3.11-slim (~125 MB) within a 325 MB image.
# gRPC's runtime (grpcio, protobuf, tritonclient's stubs) is ~22 MB of it; onnxruntime ~60.
MAX_SERVICE_LAYERS_BYTES = 200_000_000

pytestmark = [pytest.mark.docker, pytest.mark.e2e, pytest.mark.timeout(UP_TIMEOUT_S + 600)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tail(text: str, chars: int = 4000) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


@dataclass(frozen=True)
class Stack:
    compose: list[str]  # `docker compose` with this stack's files and project name
    env: dict[str, str]
    base_url: str

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.compose, *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def image(self, service: str) -> str:
        config = self.run("config", "--format", "json")
        assert config.returncode == 0, config.stderr
        return str(json.loads(config.stdout)["services"][service]["image"])

    def logs(self) -> str:
        result = self.run("logs", "--no-color", "--tail", "80")
        return result.stdout + result.stderr


def require_docker() -> None:
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        compose = subprocess.run(
            ["docker", "compose", "version", "--short"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"the docker client cannot run: {exc}. Install Docker.", pytrace=False)
    if info.returncode != 0:
        pytest.fail(
            "no Docker engine answers `docker info`: start one (on machines without Docker Hub "
            f"run ../shared/docker/offline-engine.sh). docker said: {info.stderr.strip()}",
            pytrace=False,
        )
    if compose.returncode != 0:
        pytest.fail(
            f"`docker compose` (Compose v2) is missing: {compose.stderr.strip()}", pytrace=False
        )


@pytest.fixture(scope="module")
def stack(mnist_full_dir: Path) -> Iterator[Stack]:
    require_docker()
    port = free_port()
    env = {
        **os.environ,
        "MNIST_FULL_DATA": str(mnist_full_dir.resolve()),
        "MNIST_TEST_PORT": str(port),
        # Variables of docker-compose.yml that a developer may have set for their own stack.
        "MNIST_DATASET": "mnist",
        "MNIST_VERSION_POLICY": "latest:1",
        "MNIST_MODEL_CONTROL": "0",
    }
    project = f"mnist-serving-test-{os.getpid()}"
    compose = ["docker", "compose", "-f", "docker-compose.yml", "-f", str(OVERRIDE), "-p", project]
    stack = Stack(compose, env, f"http://127.0.0.1:{port}")
    try:
        started = time.monotonic()
        up = stack.run(
            "up",
            "--build",
            "--wait",
            "--wait-timeout",
            str(UP_TIMEOUT_S - 60),
            timeout=UP_TIMEOUT_S,
        )
        if up.returncode != 0:
            pytest.fail(
                f"`docker compose up --build --wait` failed ({up.returncode}):\n"
                f"{tail(up.stdout + up.stderr)}\n--- logs ---\n{stack.logs()}",
                pytrace=False,
            )
        print(f"compose up --build --wait: {time.monotonic() - started:.1f} s")
        yield stack
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"") + (exc.stderr or b"")
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        pytest.fail(
            f"`docker compose up` did not finish within {UP_TIMEOUT_S} s:\n{tail(text)}",
            pytrace=False,
        )
    finally:
        down = stack.run(
            "down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=DOWN_TIMEOUT_S
        )
        assert down.returncode == 0, f"`docker compose down -v` failed: {down.stderr}"


def test_the_api_is_healthy_and_ready(stack: Stack) -> None:
    ps = stack.run("ps", "--format", "json", "api")
    assert ps.returncode == 0, ps.stderr
    # One JSON object per line (Compose >= 2.21) or one array (older releases).
    lines = [line for line in ps.stdout.splitlines() if line.strip()]
    rows = (
        json.loads(lines[0])
        if lines and lines[0].startswith("[")
        else [json.loads(line) for line in lines]
    )
    assert [(row["Service"], row["State"], row["Health"]) for row in rows] == [
        ("api", "running", "healthy")
    ]
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        assert client.get("/health/ready").status_code == 200
        assert client.get("/health/live").status_code == 200


def test_real_digits_uploaded_as_png_are_recognised(
    stack: Stack, mnist_test_digits: RawSplit
) -> None:
    # Two digits of each class from the official test set; the model is ~99 % accurate.
    labels = mnist_test_digits.labels
    picks = [int(i) for digit in range(10) for i in np.flatnonzero(labels == digit)[:2]]
    correct = 0
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        for index in picks:
            png = encode(mnist_test_digits.images[index])
            response = client.post("/predict", files={"file": (f"{index}.png", png, "image/png")})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"]
            [prediction] = body["predictions"]
            probabilities = prediction["probabilities"]
            assert len(probabilities) == 10
            assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
            assert prediction["digit"] == int(np.argmax(probabilities))
            assert prediction["confidence"] == pytest.approx(max(probabilities))
            correct += prediction["digit"] == int(labels[index])
    assert correct >= 19, f"only {correct} of {len(picks)} real test digits recognised"


def test_the_served_model_is_version_1_trained_on_full_mnist_with_its_reports(
    stack: Stack,
) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        response = client.get("/summary")
    assert response.status_code == 200, response.text
    body = response.json()
    card = body["model_card"]
    assert body["model_version"] == "1"
    assert (card["dataset"], card["train_size"], card["epochs"], card["seed"]) == (
        "mnist",
        60_000,
        TEST_EPOCHS,
        int(TEST_SEED),
    )
    assert card["version"] == 1
    assert card["test_accuracy"] >= GATE
    print(f"compose-trained version 1: test accuracy {card['test_accuracy']:.4f}")
    reports = stack.run("exec", "-T", "api", "ls", "/models/mnist/1")
    assert reports.returncode == 0, reports.stderr
    assert set(reports.stdout.split()) == {
        "model.onnx",
        "metrics.json",
        "training_curves.png",
        "confusion_matrix.png",
    }


def test_a_second_up_reuses_the_model_in_the_volume(stack: Stack) -> None:
    started = time.monotonic()
    rerun = stack.run("run", "--rm", "--no-deps", "first-model", timeout=120)
    assert rerun.returncode == 0, tail(rerun.stdout + rerun.stderr)
    assert "holds 1 version(s): not training" in rerun.stdout, tail(rerun.stdout + rerun.stderr)
    assert time.monotonic() - started < 60


def test_the_service_image_is_lean_and_unprivileged(stack: Stack) -> None:
    image = stack.image("api")
    probe = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "host",
            "--entrypoint",
            "python",
            image,
            "-c",
            "import onnxruntime, service.app; import tensorflow",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode != 0
    assert "No module named 'tensorflow'" in probe.stderr, probe.stderr

    inspect = subprocess.run(
        ["docker", "image", "inspect", image, "python:3.11-slim"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    service, base = json.loads(inspect.stdout)
    assert service["Config"]["User"] == "10001:10001"
    added = int(service["Size"]) - int(base["Size"])
    assert added < MAX_SERVICE_LAYERS_BYTES, f"the service adds {added / 1e6:.0f} MB to its base"


def api_started_at(stack: Stack) -> str:
    ps = stack.run("ps", "-q", "api")
    assert ps.returncode == 0, ps.stderr
    inspect = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.StartedAt}}", ps.stdout.strip()],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return inspect.stdout.strip()


def test_compose_run_train_publishes_version_2_and_the_running_api_serves_it(
    stack: Stack, mnist_test_digits: RawSplit
) -> None:
    """Registered last: after it, the stack serves version 2."""
    started_at = api_started_at(stack)
    png = encode(mnist_test_digits.images[0])
    stop = threading.Event()
    answers: list[tuple[int, str | None]] = []

    def keep_asking() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=10) as client:
            while not stop.wait(0.05):
                response = client.post("/predict", files={"file": ("d.png", png, "image/png")})
                body = response.json() if response.status_code == 200 else {}
                answers.append((response.status_code, body.get("model_version")))

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        train = stack.run("run", "--rm", "train", timeout=TRAIN_TIMEOUT_S)
        assert train.returncode == 0, tail(train.stdout + train.stderr)
        assert "published /models/mnist/2/model.onnx" in train.stdout, tail(train.stdout)
        published = time.monotonic()
        deadline = published + POLL_S + 10
        while time.monotonic() < deadline and not (answers and answers[-1][1] == "2"):
            time.sleep(0.05)
        swapped = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        asker.join(timeout=30)
    assert answers, "no request got through while training"
    assert answers[-1][1] == "2", f"still answering {answers[-1:]}"
    print(f"publish -> first answer from version 2: {swapped - published:.2f} s")
    assert swapped - published <= POLL_S + 2
    statuses = {status for status, _ in answers}
    assert statuses == {200}, f"{len(answers)} requests during retraining: {statuses}"
    assert {version for _, version in answers} == {"1", "2"}
    assert api_started_at(stack) == started_at, "the API restarted"
    index = httpx.post(f"{stack.base_url}/v2/repository/index", timeout=10).json()
    assert [(e["version"], e["state"]) for e in index] == [("1", "UNAVAILABLE"), ("2", "READY")]
