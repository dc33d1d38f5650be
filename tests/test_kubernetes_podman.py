"""The Kubernetes pods really run: the `local` overlay under `podman kube play`.

No cluster runs here (../shared/kube/README.md), but podman plays a rendered pod spec with
its images, environment, volumes and securityContext. With the images built from the
project's Dockerfile: the API pod starts on an empty repository (live, not ready), the first
training Job's pod publishes version 1, the API turns ready by hot reload and answers real
digits, then the retraining CronJob's pod publishes version 2 and the API serves it without
a restart, answering every request meanwhile; on SIGTERM it drains (not ready, still
serving) and stops within its grace period.

podman 4.3 plays Pods and Deployments but not Jobs or CronJobs: their pod templates are
played as Pods (restartPolicy Never), as the Job controller would create them. Docker (to
build) and podman (`../shared/kube/podman-local.sh`, run by scripts/test.sh) are
requirements: without them these tests fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.digits import encode
from training.data import RawSplit

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_OVERLAY = REPO_ROOT / "deploy" / "kubernetes" / "overlays" / "local"
COMPOSE = ["docker", "compose", "-f", "docker-compose.yml", "-f", "tests/compose.test.yml"]
# The tags tests/compose.test.yml builds (shared with tests/test_compose.py: one build).
IMAGES = ("mnist-serving-test:service", "mnist-serving-test:train")
BASE_URL = "http://127.0.0.1:18080"  # the local overlay's MNIST_PORT
BUILD_TIMEOUT_S = 1500
TRAIN_TIMEOUT_S = 600
READY_TIMEOUT_S = 90
API_USER = "10001"

pytestmark = [
    pytest.mark.docker,
    pytest.mark.e2e,
    pytest.mark.timeout(BUILD_TIMEOUT_S + 2 * TRAIN_TIMEOUT_S + 600),
]

Obj = dict[str, Any]


def tail(text: str, chars: int = 4000) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def run(*command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def require(tool: str, hint: str) -> None:
    if not shutil.which(tool):
        pytest.fail(f"`{tool}` is not on PATH: {hint}", pytrace=False)


def build_images() -> None:
    """The images from the project's Dockerfile, built as the compose test builds them, then
    copied into podman's storage (skipped when podman already has that very image)."""
    require("docker", "install Docker (scripts/test.sh starts the offline engine here)")
    started = time.monotonic()
    build = run(*COMPOSE, "build", "train", "api", timeout=BUILD_TIMEOUT_S)
    assert build.returncode == 0, f"docker compose build failed:\n{tail(build.stderr)}"
    for image in IMAGES:
        docker_id = run("docker", "image", "inspect", "--format", "{{.Id}}", image).stdout
        podman_id = run("podman", "image", "inspect", "--format", "{{.Id}}", image).stdout
        if not podman_id.strip() or docker_id.strip().removeprefix("sha256:") != podman_id.strip():
            pulled = run("podman", "pull", "-q", f"docker-daemon:{image}", timeout=600)
            assert pulled.returncode == 0, f"podman pull {image} failed:\n{pulled.stderr}"
    print(f"images built and copied to podman: {time.monotonic() - started:.1f} s")


def render_local() -> list[Obj]:
    done = run("kubectl", "kustomize", str(LOCAL_OVERLAY), timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def point_host_paths(spec: Obj, paths: dict[str, Path]) -> None:
    """The overlay's hostPath volumes, moved to this test's own directories."""
    for volume in spec["volumes"]:
        if volume["name"] in paths:
            volume["hostPath"]["path"] = str(paths[volume["name"]])


def job_pod(job: Obj) -> Obj:
    """A Job's (or CronJob's) pod template as the Pod its controller would create."""
    spec = job["spec"]["jobTemplate"]["spec"] if job["kind"] == "CronJob" else job["spec"]
    template = spec["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": job["metadata"]["name"], "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


@dataclass
class Cluster:
    """The played manifests, each in its own file, taken down at the end."""

    workdir: Path
    played: list[Path] = field(default_factory=list)

    def play(self, name: str, objects: list[Obj]) -> None:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        done = run("podman", "kube", "play", str(path), timeout=180)
        self.played.append(path)
        assert done.returncode == 0, f"podman kube play {name} failed:\n{done.stderr}"

    def logs(self, container: str) -> str:
        done = run("podman", "logs", "--tail", "60", container)
        return tail(done.stdout + done.stderr)

    def wait_for_exit(self, container: str) -> int:
        try:
            done = run("podman", "wait", container, timeout=TRAIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{container} still running after {TRAIN_TIMEOUT_S} s:\n{self.logs(container)}",
                pytrace=False,
            )
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip())

    def down(self) -> None:
        for path in reversed(self.played):
            run("podman", "kube", "down", str(path), timeout=120)


@dataclass(frozen=True)
class Deployment:
    cluster: Cluster
    objects: list[Obj]
    models: Path
    api_container: str

    def train(self, kind: str) -> None:
        [job] = [obj for obj in self.objects if obj["kind"] == kind]
        pod = job_pod(job)
        settings = [
            obj
            for obj in self.objects
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("mnist-train-")
        ]
        started = time.monotonic()
        self.cluster.play(pod["metadata"]["name"], [*settings, pod])
        container = f"{pod['metadata']['name']}-{pod['spec']['containers'][0]['name']}"
        code = self.cluster.wait_for_exit(container)
        print(f"{kind} pod {container}: exit {code} after {time.monotonic() - started:.1f} s")
        assert code == 0, f"{container} exited {code}:\n{self.cluster.logs(container)}"


def wait_until(predicate: Any, timeout_s: float, what: str, logs: Any) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if predicate():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout_s} s:\n{logs()}", pytrace=False)


def status(path: str) -> int:
    return httpx.get(BASE_URL + path, timeout=5).status_code


@pytest.fixture(scope="module")
def deployment(mnist_offline_dir: Path) -> Iterator[Deployment]:
    require("kubectl", "scripts/test.sh installs it")
    require("podman", "run ../shared/kube/podman-local.sh (scripts/test.sh does)")
    for path in ("/health/live", "/health/ready"):
        try:
            httpx.get(BASE_URL + path, timeout=1)
        except httpx.HTTPError:
            continue
        pytest.fail(f"something already answers on {BASE_URL}: stop it first", pytrace=False)
    build_images()
    workdir = Path(tempfile.mkdtemp(prefix="mnist-k8s-", dir="/var/tmp"))
    models = workdir / "models"
    models.mkdir()
    # The pods run as the image's unprivileged user; a hostPath keeps the host's owner
    # (podman applies no fsGroup to it), as a ReadWriteMany share is set up for that user.
    os.chown(models, int(API_USER), int(API_USER))
    paths = {"model-repository": models, "data": mnist_offline_dir.resolve()}
    objects = render_local()
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            point_host_paths(obj["spec"]["template"]["spec"], paths)
        elif obj["kind"] == "CronJob":
            point_host_paths(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"], paths)
    cluster = Cluster(workdir)
    volumes_before = set(run("podman", "volume", "ls", "-q").stdout.split())
    try:
        [api] = [obj for obj in objects if obj["kind"] == "Deployment"]
        settings = [
            obj
            for obj in objects
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("mnist-api-")
        ]
        cluster.play("api", [*settings, api])
        # podman names a Deployment's one pod NAME-pod-0 and its containers POD-CONTAINER.
        [api_container] = api["spec"]["template"]["spec"]["containers"]
        container = f"{api['metadata']['name']}-pod-0-{api_container['name']}"
        yield Deployment(cluster, objects, models, container)
    finally:
        cluster.down()
        for volume in set(run("podman", "volume", "ls", "-q").stdout.split()) - volumes_before:
            run("podman", "volume", "rm", "-f", volume)
        shutil.rmtree(workdir, ignore_errors=True)


def predict_digits(digits: RawSplit, expected_version: str) -> int:
    labels = digits.labels
    picks = [int(i) for digit in range(10) for i in np.flatnonzero(labels == digit)[:2]]
    correct = 0
    with httpx.Client(base_url=BASE_URL, timeout=10) as client:
        for index in picks:
            png = encode(digits.images[index])
            response = client.post("/predict", files={"file": (f"{index}.png", png, "image/png")})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model_version"] == expected_version
            [prediction] = body["predictions"]
            correct += prediction["digit"] == int(labels[index])
    return correct


def test_the_api_pod_starts_on_an_empty_repository_live_but_not_ready(
    deployment: Deployment,
) -> None:
    elapsed = wait_until(
        lambda: status("/health/live") == 200,
        READY_TIMEOUT_S,
        "the API pod answering its liveness path",
        lambda: deployment.cluster.logs(deployment.api_container),
    )
    print(f"API pod live after {elapsed:.1f} s")
    # Readiness waits for a model: no version is published yet.
    assert status("/health/ready") == 503


def test_the_api_container_runs_unprivileged_on_a_read_only_root(deployment: Deployment) -> None:
    inspect = run(
        "podman",
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}} {{len .EffectiveCaps}}",
        deployment.api_container,
    )
    assert inspect.returncode == 0, inspect.stderr
    read_only, user, capabilities = inspect.stdout.split()
    assert (read_only, user.split(":")[0], capabilities) == ("true", API_USER, "0")
    # The root filesystem refuses writes; only the /tmp emptyDir takes them.
    probe = (
        "import pathlib, tempfile; tempfile.TemporaryFile(); pathlib.Path('/home/mnist/x').touch()"
    )
    write = run("podman", "exec", deployment.api_container, "python", "-c", probe)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr, write.stderr


def test_the_first_training_pod_publishes_version_1_and_the_api_turns_ready(
    deployment: Deployment, mnist_test_digits: RawSplit
) -> None:
    deployment.train("Job")
    version_1 = deployment.models / "mnist" / "1"
    assert (version_1 / "model.onnx").is_file(), sorted(deployment.models.rglob("*"))
    assert version_1.stat().st_uid == int(API_USER)
    elapsed = wait_until(
        lambda: status("/health/ready") == 200,
        READY_TIMEOUT_S,
        "the API pod ready on version 1",
        lambda: deployment.cluster.logs(deployment.api_container),
    )
    print(f"API ready {elapsed:.1f} s after version 1 was published")
    # 5 epochs on 5,000 digits are ~95 % accurate: 18 of 20 real test digits, not all.
    correct = predict_digits(mnist_test_digits, "1")
    assert correct >= 18, f"only {correct} of 20 real test digits recognised"
    images = mnist_test_digits.images[:2]
    infer = httpx.post(
        BASE_URL + "/v2/models/mnist/infer",
        json={
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 28, 28, 1],
                    "datatype": "UINT8",
                    "data": images.reshape(-1).tolist(),
                }
            ]
        },
        timeout=10,
    )
    assert infer.status_code == 200, infer.text
    assert infer.json()["model_version"] == "1"


def test_the_retraining_pod_publishes_version_2_and_the_api_serves_it_without_a_restart(
    deployment: Deployment, mnist_test_digits: RawSplit
) -> None:
    restarts_before = run(
        "podman", "inspect", "--format", "{{.RestartCount}}", deployment.api_container
    ).stdout.strip()
    png = encode(mnist_test_digits.images[0])
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        # Requests all along the hot reload: none may fail while version 2 replaces 1.
        with httpx.Client(base_url=BASE_URL, timeout=10) as client:
            while not stop.is_set():
                response = client.post("/predict", files={"file": ("0.png", png, "image/png")})
                version = response.json().get("model_version", "") if response.is_success else ""
                answers.append((response.status_code, str(version)))
                time.sleep(0.05)

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        deployment.train("CronJob")
        assert (deployment.models / "mnist" / "2" / "model.onnx").is_file()
        elapsed = wait_until(
            lambda: bool(answers) and answers[-1][1] == "2",
            30,
            "answers from version 2",
            lambda: deployment.cluster.logs(deployment.api_container),
        )
        print(f"version 2 answering {elapsed:.1f} s after it was published")
    finally:
        stop.set()
        asker.join(timeout=15)
    assert answers, "no request was answered during retraining"
    failures = [code for code, _ in answers if code != 200]
    assert failures == [], f"{len(failures)} of {len(answers)} requests failed during reload"
    versions = [version for _, version in answers]
    assert set(versions) == {"1", "2"}
    # Once version 2 answers, version 1 never does again (the policy serves latest:1).
    assert "1" not in versions[versions.index("2") :]
    assert predict_digits(mnist_test_digits, "2") >= 18
    restarts_after = run(
        "podman", "inspect", "--format", "{{.RestartCount}}", deployment.api_container
    ).stdout.strip()
    assert restarts_after == restarts_before, "the API container restarted for version 2"


def test_sigterm_drains_the_api_pod_not_ready_but_still_serving_then_it_stops_in_its_grace(
    deployment: Deployment, mnist_test_digits: RawSplit
) -> None:
    # What the kubelet does at the end of a pod's life: SIGTERM, then the grace period.
    [api] = [obj for obj in deployment.objects if obj["kind"] == "Deployment"]
    grace_s = api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    png = encode(mnist_test_digits.images[0])
    killed = run("podman", "kill", "--signal", "TERM", deployment.api_container)
    assert killed.returncode == 0, killed.stderr
    started = time.monotonic()
    ready: list[int] = []
    answered: list[int] = []
    with httpx.Client(base_url=BASE_URL, timeout=5) as client:
        while time.monotonic() - started < 2:  # within the local overlay's 3 s delay
            ready.append(client.get("/health/ready").status_code)
            response = client.post("/predict", files={"file": ("0.png", png, "image/png")})
            answered.append(response.status_code)
            time.sleep(0.1)
    assert set(ready) == {503}, f"readiness while draining: {ready}"
    assert set(answered) == {200}, f"requests while draining: {answered}"
    # Then the server closes its port well within the grace period. (podman restarts the
    # container afterwards, restartPolicy Always, so its exit code is not waited for here.)
    while time.monotonic() - started < grace_s:
        try:
            httpx.get(BASE_URL + "/health/live", timeout=1)
        except httpx.TransportError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the API still answered {grace_s} s after SIGTERM", pytrace=False)
    print(f"API stopped serving {time.monotonic() - started:.1f} s after SIGTERM")
