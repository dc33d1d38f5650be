"""Hot reload for real: `python -m service` on a model repository, under load, over HTTP.

The figures these tests measure (swap latency, requests during swaps, RSS after load and
unload cycles, how fast workers converge) go to test-artifacts/lifecycle-*.json.
"""

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.digits import encode
from tests.model_files import publish, truncated
from tests.server import REPO_ROOT, Server, server_process
from training.data import RawSplit

pytestmark = pytest.mark.e2e
ARTIFACTS = REPO_ROOT / "test-artifacts"
POLL_S = 0.2
CLIENTS = 12
SWAPS_BY_PUBLISHING = 10
SWAPS_BY_CONTROL = 10
CYCLES = 50


def write_artifact(name: str, figures: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"lifecycle-{name}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


@pytest.fixture
def repository(trained_model_path: Path, tmp_path: Path) -> Path:
    publish(tmp_path, trained_model_path)
    return tmp_path


@pytest.fixture
def server(repository: Path, trained_model_path: Path) -> Iterator[Server]:
    with server_process(
        trained_model_path,
        MNIST_MODEL_REPOSITORY=str(repository),
        MNIST_REPOSITORY_POLL_S=str(POLL_S),
        MNIST_MODEL_CONTROL="1",
        MNIST_WORKERS="1",
    ) as running:
        yield running


def index(url: str) -> dict[int, dict[str, Any]]:
    entries = httpx.post(f"{url}/v2/repository/index", timeout=10).json()
    return {int(entry["version"]): entry for entry in entries}


def wait_for(condition: Any, what: str, timeout_s: float = 30.0) -> float:
    """Poll ``condition`` until true; the time it became true (perf_counter)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if condition():
            return time.perf_counter()
        time.sleep(0.02)
    pytest.fail(f"not within {timeout_s:.0f} s: {what}")


def serves_only(url: str, version: int) -> bool:
    return [v for v, e in index(url).items() if e["state"] == "READY"] == [version]


@dataclass(frozen=True)
class Answer:
    started: float
    ended: float
    status: int
    version: str | None


async def keep_asking(
    url: str, digits: RawSplit, stop: asyncio.Event, answers: list[Answer], client_no: int
) -> None:
    """One client: single JSON images and PNG files in turn, until told to stop."""
    png = encode(digits.images[client_no])
    json_image = digits.images[client_no].tolist()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for turn in range(100_000):  # bounded; the test stops it long before
            if stop.is_set():
                return
            started = time.perf_counter()
            if turn % 2:
                response = await client.post("/predict", files={"file": ("d.png", png)})
            else:
                response = await client.post("/predict", json={"image": json_image})
            version = response.json().get("model_version") if response.status_code == 200 else None
            answers.append(Answer(started, time.perf_counter(), response.status_code, version))


async def under_load(
    url: str, digits: RawSplit, swaps: Any
) -> tuple[list[Answer], list[tuple[float, float, int]]]:
    """Run ``swaps`` (in a thread) while CLIENTS clients ask; their answers and the swaps."""
    stop = asyncio.Event()
    answers: list[Answer] = []
    clients = [
        asyncio.create_task(keep_asking(url, digits, stop, answers, n)) for n in range(CLIENTS)
    ]
    try:
        await asyncio.sleep(0.5)
        windows = await asyncio.to_thread(swaps)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    return answers, windows


def check_every_answer_came_from_a_loaded_version(
    answers: list[Answer], windows: list[tuple[float, float, int]]
) -> None:
    """Each version may answer only between the moment it was asked for and the moment its
    successor was seen serving alone; an answer outside its version's window failed."""
    selectable: dict[str, list[tuple[float, float]]] = {}
    for (begun, _, version), following in zip(windows, [*windows[1:], None], strict=True):
        until = following[1] if following else float("inf")
        selectable.setdefault(str(version), []).append((begun, until))
    wrong = [
        a
        for a in answers
        if not any(
            a.started <= until and a.ended >= begun
            for begun, until in selectable.get(a.version or "", [])
        )
    ]
    assert not wrong, f"{len(wrong)} answers from versions not loaded then, e.g. {wrong[:3]}"


async def test_twenty_swaps_under_load_fail_no_request(
    server: Server, repository: Path, trained_model_path: Path, mnist_test_digits: RawSplit
) -> None:
    url = server.url
    first = (time.perf_counter(), time.perf_counter(), 1)

    def swap() -> list[tuple[float, float, int]]:
        # (asked at, seen serving alone at, version)
        windows = [first]
        for _ in range(SWAPS_BY_PUBLISHING):
            asked = time.perf_counter()
            version = publish(repository, trained_model_path)
            seen = wait_for(lambda v=version: serves_only(url, v), f"version {version} serves")
            windows.append((asked, seen, version))
        published = windows[-1][2]
        for n in range(SWAPS_BY_CONTROL):
            version = 1 + (n * 3) % published  # back and forth through the repository
            if version == windows[-1][2]:
                version = version % published + 1
            config = json.dumps({"version_policy": {"specific": {"versions": [version]}}})
            asked = time.perf_counter()
            response = httpx.post(
                f"{url}/v2/repository/models/mnist/load",
                json={"parameters": {"config": config}},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            assert response.json()["ready_versions"] == [str(version)]
            windows.append((asked, time.perf_counter(), version))
        return windows

    answers, windows = await under_load(url, mnist_test_digits, swap)

    statuses = [a.status for a in answers]
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    assert all(a.version is not None for a in answers)
    check_every_answer_came_from_a_loaded_version(answers, windows)
    latencies = []
    for asked, _, version in windows[1 : 1 + SWAPS_BY_PUBLISHING]:
        first_answer = min(a.ended for a in answers if a.version == str(version))
        latencies.append((first_answer - asked) * 1000)
    write_artifact(
        "swaps",
        {
            "swaps": len(windows) - 1,
            "requests": len(answers),
            "non_2xx": len(answers) - statuses.count(200),
            "clients": CLIENTS,
            "poll_s": POLL_S,
            "publish_to_first_answer_ms": {
                "median": round(statistics.median(latencies), 1),
                "max": round(max(latencies), 1),
            },
            "versions_answering": sorted({a.version for a in answers if a.version}, key=int),
        },
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_fifty_load_and_unload_cycles_do_not_grow_the_worker(
    server: Server, mnist_test_digits: RawSplit
) -> None:
    url = server.url
    files = {"file": ("d.png", encode(mnist_test_digits.images[0]))}
    samples = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for cycle in range(1, CYCLES + 1):
            assert client.post("/v2/repository/models/mnist/unload").status_code == 200
            assert client.post("/predict", files=files).status_code == 503
            assert client.post("/v2/repository/models/mnist/load").status_code == 200
            for _ in range(20):
                assert client.post("/predict", files=files).status_code == 200
            samples.append(rss_kib(server.process.pid))
            if cycle == 1:
                after_first = samples[-1]
    growth = samples[-1] / after_first - 1
    write_artifact(
        "rss",
        {
            "cycles": CYCLES,
            "rss_after_first_load_mib": round(after_first / 1024, 1),
            "rss_after_last_mib": round(samples[-1] / 1024, 1),
            "rss_peak_mib": round(max(samples) / 1024, 1),
            "growth_percent": round(growth * 100, 2),
        },
    )
    assert growth <= 0.10, f"RSS grew {growth:.1%} over {CYCLES} cycles: {samples}"


def test_a_broken_version_is_refused_counted_logged_and_indexed_while_serving_goes_on(
    server: Server, repository: Path, trained_model_path: Path
) -> None:
    url = server.url
    publish(repository, truncated(trained_model_path))
    wait_for(lambda: index(url).get(2, {}).get("state") == "UNAVAILABLE", "version 2 refused")
    assert "not a valid ONNX model" in index(url)[2]["reason"]
    answer = httpx.post(f"{url}/predict", json={"image": [0.0] * 784}, timeout=10).json()
    assert answer["model_version"] == "1"
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'mnist_model_loads_total{outcome="refused",version="2"} 1.0' in metrics
    assert 'mnist_model_loads_total{outcome="loaded",version="1"} 1.0' in metrics
    refusals = [line for line in server.output if "version 2 refused" in line]
    assert len(refusals) == 1, server.output
    assert "not a valid ONNX model" in refusals[0]
    assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200


def test_a_server_on_an_empty_repository_waits_not_ready_for_its_first_version(
    tmp_path: Path, trained_model_path: Path
) -> None:
    empty = tmp_path / "repository"
    empty.mkdir()
    with server_process(
        trained_model_path,
        MNIST_MODEL_REPOSITORY=str(empty),
        MNIST_REPOSITORY_POLL_S=str(POLL_S),
        MNIST_WORKERS="1",
        ready_path="/health/live",
    ) as running:
        assert httpx.get(f"{running.url}/health/ready", timeout=10).status_code == 503
        assert httpx.get(f"{running.url}/v2/health/ready", timeout=10).status_code == 503
        publish(empty, trained_model_path)
        wait_for(
            lambda: httpx.get(f"{running.url}/health/ready", timeout=10).status_code == 200,
            "ready once version 1 is published",
            timeout_s=10,
        )


def test_several_workers_converge_on_new_versions_and_on_model_control(
    repository: Path, trained_model_path: Path
) -> None:
    poll_s = 0.5
    with server_process(
        trained_model_path,
        MNIST_MODEL_REPOSITORY=str(repository),
        MNIST_REPOSITORY_POLL_S=str(poll_s),
        MNIST_MODEL_CONTROL="1",
        MNIST_WORKERS="2",
    ) as running:
        url = running.url

        def every_worker(version: int, state: str = "READY") -> bool:
            workers = index(url).get(version, {}).get("workers") or {}
            return len(workers) == 2 and set(workers.values()) == {state}

        wait_for(lambda: every_worker(1), "both workers report version 1")
        published = time.perf_counter()
        publish(repository, trained_model_path)
        by_publishing = wait_for(lambda: every_worker(2), "both workers serve version 2")
        # New connections reach either worker: all of them answer with version 2 now.
        for _ in range(20):
            with httpx.Client(base_url=url, timeout=10) as client:
                assert (
                    client.post("/predict", json={"image": [0.0] * 784}).json()["model_version"]
                    == "2"
                )
        config = json.dumps({"version_policy": {"specific": {"versions": [1]}}})
        asked = time.perf_counter()
        response = httpx.post(
            f"{url}/v2/repository/models/mnist/load",
            json={"parameters": {"config": config}},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        by_control = wait_for(lambda: every_worker(1) and every_worker(2, "UNAVAILABLE"), "1")
    figures = {
        "workers": 2,
        "poll_s": poll_s,
        "publish_to_all_workers_s": round(by_publishing - published, 2),
        "control_to_all_workers_s": round(by_control - asked, 2),
    }
    write_artifact("workers", figures)
    # Within one poll interval, plus the time to load, self-test and report (well under 1 s).
    assert figures["publish_to_all_workers_s"] <= poll_s + 1.5
    assert figures["control_to_all_workers_s"] <= poll_s + 1.5
