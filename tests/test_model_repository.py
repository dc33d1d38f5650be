"""The model repository in-process: version policies, refused versions, swaps, model control."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import Metrics
from service.models.policy import PolicyError, VersionPolicy
from service.models.repository import LoadSettings, ModelRepository, VersionNotReadyError, scanner
from service.models.session import SessionTuning
from service.models.worker_state import WorkerState
from service.settings import Settings
from tests.model_files import failing_its_self_test, publish, truncated, with_wrong_signature

DIGIT = np.zeros((1, 28, 28, 1), np.float32)


# --------------------------------------------------------------------------------------
# Version policies
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("latest:1", [5]),
        ("latest:2", [3, 5]),
        ("latest:9", [1, 2, 3, 5]),
        ("all", [1, 2, 3, 5]),
        ("specific:2", [2]),
        ("specific:5,1", [1, 5]),
        ("specific:4", []),
    ],
)
def test_policies_select_as_tf_serving_does(text: str, selected: list[int]) -> None:
    assert VersionPolicy.parse(text).select([3, 1, 5, 2]) == selected


@pytest.mark.parametrize(
    "text", ["latest", "latest:0", "latest:-1", "newest:1", "specific:", "specific:0", "all:2", ""]
)
def test_malformed_policies_are_refused_with_the_syntax(text: str) -> None:
    with pytest.raises(PolicyError, match="latest:N"):
        VersionPolicy.parse(text)


def test_a_malformed_policy_setting_stops_start_up() -> None:
    with pytest.raises(ValueError, match="specific:V"):
        Settings(version_policy="newest")


@pytest.mark.parametrize(
    ("triton", "text"),
    [
        ({"latest": {"num_versions": 2}}, "latest:2"),
        ({"all": {}}, "all"),
        ({"specific": {"versions": [3, 1]}}, "specific:1,3"),
    ],
)
def test_tritons_version_policy_form_is_understood(triton: object, text: str) -> None:
    assert str(VersionPolicy.from_triton(triton)) == text


@pytest.mark.parametrize(
    "triton", [{}, {"latest": {}}, {"specific": {"versions": []}}, {"all": {}, "latest": {}}, "all"]
)
def test_other_triton_policies_are_refused(triton: object) -> None:
    with pytest.raises(PolicyError, match="version_policy must be"):
        VersionPolicy.from_triton(triton)


# --------------------------------------------------------------------------------------
# The repository itself, on real model files
# --------------------------------------------------------------------------------------


def make_repository(
    directory: Path, policy: str = "latest:1", state: WorkerState | None = None
) -> tuple[ModelRepository, Metrics]:
    metrics = Metrics()
    repository = ModelRepository(
        scanner(directory, Path("unused")),
        VersionPolicy.parse(policy),
        LoadSettings("cpu", SessionTuning(), 64, 0.0, 1000),
        metrics,
        state or WorkerState(None),
    )
    return repository, metrics


def states(repository: ModelRepository) -> dict[int, str]:
    return {entry.version: entry.state for entry in repository.index()}


def reasons(repository: ModelRepository) -> dict[int, str]:
    return {entry.version: entry.reason for entry in repository.index()}


async def test_the_newest_version_serves_and_the_others_say_why_they_do_not(
    trained_model_path: Path, tmp_path: Path
) -> None:
    for _ in range(3):
        publish(tmp_path, trained_model_path)
    repository, _ = make_repository(tmp_path)
    await repository.start()
    try:
        assert repository.ready_versions() == [3]
        assert repository.resolve().version == 3
        assert states(repository) == {1: "UNAVAILABLE", 2: "UNAVAILABLE", 3: "READY"}
        assert reasons(repository)[1] == "not selected by version policy latest:1"
        with pytest.raises(VersionNotReadyError, match=r"ready versions are \[3\]"):
            repository.resolve(1)
    finally:
        await repository.stop()


async def test_an_empty_repository_is_not_ready_until_a_version_is_published(
    trained_model_path: Path, tmp_path: Path
) -> None:
    repository, _ = make_repository(tmp_path)
    await repository.start()
    try:
        assert not repository.ready
        with pytest.raises(VersionNotReadyError) as error:
            repository.resolve()
        assert error.value.status == 503
        publish(tmp_path, trained_model_path)
        await repository.reconcile()
        assert repository.ready_versions() == [1]
        assert (await repository.resolve().predict(DIGIT)).shape == (1, 10)
    finally:
        await repository.stop()


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (truncated, "not a valid ONNX model"),
        (with_wrong_signature, "expected input 'image' and output 'probabilities'"),
        (failing_its_self_test, "self-test failed: answers differ"),
    ],
)
async def test_a_broken_version_never_replaces_the_working_one(
    trained_model_path: Path, tmp_path: Path, broken: object, reason: str
) -> None:
    publish(tmp_path, trained_model_path)
    repository, metrics = make_repository(tmp_path)
    await repository.start()
    try:
        publish(tmp_path, broken(trained_model_path))  # type: ignore[operator]
        await repository.reconcile()
        assert repository.ready_versions() == [1]
        assert states(repository) == {1: "READY", 2: "UNAVAILABLE"}
        assert reason in reasons(repository)[2]
        assert metrics.loads.labels("2", "refused")._value.get() == 1
        # Refused once: the next polls do not load the same file again.
        await repository.reconcile()
        assert metrics.loads.labels("2", "refused")._value.get() == 1
        assert (await repository.resolve().predict(DIGIT)).shape == (1, 10)
    finally:
        await repository.stop()


async def test_latest_skips_a_broken_newest_version_when_starting(
    trained_model_path: Path, tmp_path: Path
) -> None:
    publish(tmp_path, trained_model_path)
    publish(tmp_path, truncated(trained_model_path))
    repository, _ = make_repository(tmp_path)
    await repository.start()
    try:
        assert repository.ready_versions() == [1]
    finally:
        await repository.stop()


async def test_policies_all_and_specific_serve_several_versions(
    trained_model_path: Path, tmp_path: Path
) -> None:
    for _ in range(3):
        publish(tmp_path, trained_model_path)
    for policy, served in (("all", [1, 2, 3]), ("specific:1,3", [1, 3]), ("latest:2", [2, 3])):
        repository, _ = make_repository(tmp_path, policy)
        await repository.start()
        try:
            assert repository.ready_versions() == served
            assert repository.resolve().version == 3
        finally:
            await repository.stop()


async def test_a_swapped_out_version_finishes_its_requests_then_is_released(
    trained_model_path: Path, tmp_path: Path
) -> None:
    publish(tmp_path, trained_model_path)
    repository, metrics = make_repository(tmp_path)
    await repository.start()
    try:
        old = repository.resolve()
        in_flight = [asyncio.ensure_future(old.predict(DIGIT)) for _ in range(20)]
        await asyncio.sleep(0)  # they are queued on version 1
        publish(tmp_path, trained_model_path)
        await repository.reconcile()
        assert repository.resolve().version == 2
        answers = await asyncio.gather(*in_flight)
        assert all(answer.shape == (1, 10) for answer in answers)
        await old.released()
        assert not old.batcher.running
        assert metrics.model.labels("1", old.model_id, "CPUExecutionProvider")._value.get() == 0
    finally:
        await repository.stop()


async def test_a_removed_only_version_keeps_serving(
    trained_model_path: Path, tmp_path: Path
) -> None:
    publish(tmp_path, trained_model_path)
    repository, _ = make_repository(tmp_path)
    await repository.start()
    try:
        (tmp_path / "mnist" / "1" / "model.onnx").unlink()
        (tmp_path / "mnist" / "1").rmdir()
        await repository.reconcile()
        # Never from some ready versions to none, except by an explicit unload.
        assert repository.ready_versions() == [1]
    finally:
        await repository.stop()


async def test_workers_share_model_control_and_report_how_they_disagree(
    trained_model_path: Path, tmp_path: Path
) -> None:
    publish(tmp_path, trained_model_path)
    publish(tmp_path, trained_model_path)
    shared = tmp_path / "state"
    first, _ = make_repository(tmp_path, state=WorkerState(shared))
    second_state = WorkerState(shared)
    second_state.pid = 1  # init: alive, and another process than this one
    second, _ = make_repository(tmp_path, state=second_state)
    await first.start()
    await second.start()
    try:
        await first.load(VersionPolicy.parse("specific:1"))
        assert first.ready_versions() == [1]
        [_, entry_2] = first.index()
        assert entry_2.workers is not None
        assert set(entry_2.workers.values()) == {"READY", "UNAVAILABLE"}
        assert "workers disagree (1 READY, 1 UNAVAILABLE of 2)" in entry_2.reason
        # What a poll does on the second worker: adopt the control state, reconcile.
        second._control = second_state.read_control()
        await second.reconcile()
        assert second.ready_versions() == [1]
        assert first.index()[0].reason == ""  # version 1: READY on both now
    finally:
        await first.stop()
        await second.stop()


# --------------------------------------------------------------------------------------
# The repository extension over HTTP (in-process)
# --------------------------------------------------------------------------------------


@pytest.fixture
def controlled(trained_model_path: Path, tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    publish(tmp_path, trained_model_path)
    publish(tmp_path, trained_model_path)
    settings = Settings(
        model_repository=tmp_path, device="cpu", model_control=True, repository_poll_s=0
    )
    with TestClient(create_app(settings)) as client:
        yield client, tmp_path


def test_the_index_lists_every_version_with_its_state(
    controlled: tuple[TestClient, Path],
) -> None:
    client, _ = controlled
    index = client.post("/v2/repository/index").json()
    assert index == [
        {
            "name": "mnist",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "not selected by version policy latest:1",
            "workers": None,
        },
        {"name": "mnist", "version": "2", "state": "READY", "reason": "", "workers": None},
    ]
    ready_only = client.post("/v2/repository/index", json={"ready": True}).json()
    assert [entry["version"] for entry in ready_only] == ["2"]


def test_load_with_a_specific_version_swaps_to_it(controlled: tuple[TestClient, Path]) -> None:
    client, _ = controlled
    config = '{"version_policy": {"specific": {"versions": [1]}}}'
    response = client.post(
        "/v2/repository/models/mnist/load", json={"parameters": {"config": config}}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "mnist", "ready_versions": ["1"]}
    answer = client.post("/predict", json={"image": [0.0] * 784}).json()
    assert answer["model_version"] == "1"
    assert client.post("/predict?version=2", json={"image": [0.0] * 784}).status_code == 404
    assert client.get("/summary").json()["model_version"] == "1"
    # A plain load goes back to the configured policy.
    assert client.post("/v2/repository/models/mnist/load").json()["ready_versions"] == ["2"]


def test_unload_makes_the_server_not_ready_until_the_next_load(
    controlled: tuple[TestClient, Path],
) -> None:
    client, _ = controlled
    assert client.post("/v2/repository/models/mnist/unload").status_code == 200
    assert client.get("/health/ready").status_code == 503
    assert client.get("/v2/health/ready").status_code == 503
    refused = client.post("/predict", json={"image": [0.0] * 784})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "no ready version" in refused.json()["detail"]
    assert {e["reason"] for e in client.post("/v2/repository/index").json()} == {
        "unloaded by model control"
    }
    assert client.post("/v2/repository/models/mnist/load").status_code == 200
    assert client.get("/health/ready").status_code == 200


def test_a_load_that_cannot_be_served_changes_nothing_and_says_why(
    controlled: tuple[TestClient, Path], trained_model_path: Path
) -> None:
    client, repository = controlled
    publish(repository, failing_its_self_test(trained_model_path))
    for versions, reason in (([3], "version 3: self-test failed"), ([9], "9 is not published")):
        config = json.dumps({"version_policy": {"specific": {"versions": versions}}})
        response = client.post(
            "/v2/repository/models/mnist/load", json={"parameters": {"config": config}}
        )
        assert response.status_code == 400
        assert reason in response.json()["error"]
        assert client.post("/predict", json={"image": [0.0] * 784}).json()["model_version"] == "2"


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"parameters": {"config": "{not json"}}, "not JSON"),
        ({"parameters": {"config": '{"max_batch_size": 8}'}}, 'only key is "version_policy"'),
        ({"parameters": {"config": '{"version_policy": {"newest": {}}}'}}, "version_policy must"),
        ({"parameters": {"file:1/model.onnx": "AAAA"}}, "only the parameter 'config'"),
    ],
)
def test_bad_load_requests_are_400_in_the_protocol_form(
    controlled: tuple[TestClient, Path], body: object, phrase: str
) -> None:
    client, _ = controlled
    response = client.post("/v2/repository/models/mnist/load", json=body)
    assert response.status_code == 400
    assert phrase in response.json()["error"]


def test_model_control_is_off_by_default(trained_model_path: Path, tmp_path: Path) -> None:
    publish(tmp_path, trained_model_path)
    settings = Settings(model_repository=tmp_path, device="cpu", repository_poll_s=0)
    with TestClient(create_app(settings)) as client:
        for action in ("load", "unload"):
            response = client.post(f"/v2/repository/models/mnist/{action}")
            assert response.status_code == 403
            assert "MNIST_MODEL_CONTROL=1" in response.json()["error"]
        assert client.post("/v2/repository/index").status_code == 200
        assert client.get("/health/ready").status_code == 200
        unknown = client.post("/v2/repository/models/other/load")
        assert unknown.status_code == 404


def test_a_wrong_method_on_a_repository_route_is_405_with_allow(
    controlled: tuple[TestClient, Path],
) -> None:
    client, _ = controlled
    response = client.put("/v2/repository/index", json={"ready": False})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "use POST" in response.json()["error"]
