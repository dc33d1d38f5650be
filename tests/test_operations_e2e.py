"""Running it in production, for real: keys, request ids and JSON logs, drain on SIGTERM,
replaced workers, and the headers every response carries."""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as triton  # type: ignore[import-untyped]

from model_contract import MODEL_CARD_KEY
from tests.digits import encode
from tests.server import REPO_ROOT, free_port, server_process, start_server, wait_until_ready
from training.data import RawSplit

pytestmark = pytest.mark.e2e
ARTIFACTS = REPO_ROOT / "test-artifacts"
KEY = "ops-test-key-5d1e9b"
ADMIN_KEY = "ops-admin-key-27c4f0"


def json_lines(output: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output if line.startswith("{")]


def test_json_logs_carry_one_access_line_per_request_and_never_a_key(
    trained_model_path: Path, mnist_test_digits: RawSplit
) -> None:
    with server_process(
        trained_model_path,
        MNIST_LOG_FORMAT="json",
        MNIST_API_KEYS=KEY,
        MNIST_WORKERS="1",
    ) as server:
        headers = {"Authorization": f"Bearer {KEY}", "X-Request-ID": "client-chosen.id-1"}
        png = encode(mnist_test_digits.images[0])
        with httpx.Client(base_url=server.url, timeout=10) as client:
            answer = client.post("/predict", files={"file": ("d.png", png)}, headers=headers)
            assert answer.status_code == 200
            assert answer.headers["x-request-id"] == "client-chosen.id-1"
            for insane_id in ("a b", "x" * 129, "<script>"):
                insane = client.post(
                    "/predict", json={"image": []}, headers={**headers, "X-Request-ID": insane_id}
                )
                assert insane.status_code == 422
                new_id = insane.headers["x-request-id"]
                assert len(new_id) == 32  # a fresh one instead
                assert insane.json()["request_id"] == new_id
            refused = client.post("/predict", json={"image": [0] * 784})
            assert refused.status_code == 401
            # tritonclient with the key as a header; the v2 id is the request id when unsent.
            v2 = triton.InferenceServerClient(server.url.removeprefix("http://"))
            tensor = triton.InferInput("image", [1, 28, 28, 1], "UINT8")
            tensor.set_data_from_numpy(mnist_test_digits.images[:1, :, :, np.newaxis])
            result = v2.infer("mnist", [tensor], headers={"X-API-Key": KEY})
            assert len(result.get_response()["id"]) == 32
            assert int(result.as_numpy("probabilities").argmax()) == mnist_test_digits.labels[0]
        time.sleep(0.5)  # the last access line is written as the response leaves
        lines = json_lines(server.output)
    everything = "".join(server.output)
    assert KEY not in everything
    assert "uvicorn.access" not in everything
    access = [line for line in lines if line["logger"] == "service.access"]
    assert access[0]["route"] == "/health/ready"  # the test's wait for the server
    access = [line for line in access if line["route"] != "/health/ready"]
    assert [line["route"] for line in access] == [
        *["/predict"] * 4,
        "unmatched",  # refused before routing
        "/v2/models/{model_name}/infer",
    ]
    first = access[0]
    assert set(first) >= {
        "time",
        "level",
        "request_id",
        "method",
        "route",
        "status",
        "latency_ms",
        "images",
        "model_version",
        "client",
        "key_id",
    }
    assert (first["request_id"], first["status"], first["images"]) == ("client-chosen.id-1", 200, 1)
    assert (first["method"], first["model_version"], first["level"]) == ("POST", "1", "info")
    assert first["key_id"].startswith("key-")
    assert first["client"].startswith("127.0.0.1:")
    assert access[4]["status"] == 401
    assert access[4]["key_id"] is None
    assert any(
        line["logger"].startswith("service") and "version 1" in line["message"] for line in lines
    )


class Load:
    """Clients sending 1,024 digits a request until the server stops taking connections."""

    def __init__(self, url: str, digits: RawSplit, clients: int):
        self.url = url
        self.body = np.resize(digits.images, (1024, 28, 28)).tobytes()
        self.ok = 0
        self.refused = 0
        self.after_sigterm = 0
        self.lost: list[str] = []
        self.sigterm_at: float | None = None
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]

    def client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for _ in range(10_000):  # bounded; the server's exit ends it long before
                if self.stop.is_set():
                    return
                try:
                    response = client.post(
                        "/predict?dtype=uint8&shape=1024,28,28",
                        content=self.body,
                        headers={"content-type": "application/octet-stream"},
                    )
                except httpx.ConnectError:
                    self.refused += 1  # never accepted: the listener is closed
                    return
                except httpx.HTTPError as exc:
                    self.lost.append(f"{type(exc).__name__}: {exc}")
                    return
                if response.status_code != 200:
                    self.lost.append(f"{response.status_code}: {response.text[:200]}")
                    return
                self.ok += 1
                if self.sigterm_at is not None:
                    self.after_sigterm += 1


def test_sigterm_under_load_loses_no_accepted_request_and_exits_0(
    trained_model_path: Path, mnist_test_digits: RawSplit
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(
        trained_model_path,
        port,
        MNIST_WORKERS="1",
        MNIST_DRAIN_DELAY_S="1.5",
        MNIST_DRAIN_TIMEOUT_S="30",
        # 24 requests of 1,024 digits fit the (bulk) queue: no 503 for being busy.
        MNIST_BATCH_QUEUE_BULK_IMAGES="32768",
        MNIST_ACCESS_LOG="false",
    )
    load = Load(url, mnist_test_digits, clients=24)
    try:
        wait_until_ready(server, url)
        for thread in load.threads:
            thread.start()
        deadline = time.monotonic() + 60
        while load.ok < 24 and time.monotonic() < deadline:  # every client under way
            time.sleep(0.1)
        assert load.ok >= 24, f"only {load.ok} answers before SIGTERM: {load.lost[:3]}"
        load.sigterm_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Still answering, but no longer ready: load balancers stop sending.
        assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 503
        assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200
        code = server.wait(timeout=60)
        exited_after = time.monotonic() - load.sigterm_at
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(timeout=60)
        if server.poll() is None:
            server.kill()
            server.wait()
    output = server.stdout.read() if server.stdout else ""
    figures = {
        "clients": 24,
        "images_per_request": 1024,
        "answered": load.ok,
        "answered_after_sigterm": load.after_sigterm,
        "refused_connections_after_drain": load.refused,
        "lost": len(load.lost),
        "exit_code": code,
        "exit_after_sigterm_s": round(exited_after, 2),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "drain.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    assert load.lost == [], load.lost[:5]
    assert code == 0, output[-3000:]
    assert load.after_sigterm > 0  # it went on serving during the delay
    assert "Traceback" not in output


def worker_pids(supervisor: int) -> set[int]:
    """uvicorn's workers: the supervisor's spawned children (not multiprocessing's tracker)."""
    found: set[int] = set()
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            if b"spawn_main" in command:
                found.add(int(child))
    return found


def test_a_killed_worker_is_replaced_serves_the_same_model_and_the_supervisor_exits_0(
    trained_model_path: Path, tmp_path: Path
) -> None:
    model = tmp_path / "mnist.onnx"
    shutil.copyfile(trained_model_path, model)
    with server_process(model, MNIST_WORKERS="2") as server:
        # Replaced while serving: the restarted worker must not pick the new file up.
        other = onnx.load(model)
        for prop in other.metadata_props:
            if prop.key == MODEL_CARD_KEY:
                card = json.loads(prop.value)
                prop.value = json.dumps({**card, "id": "replaced-while-serving"})
        onnx.save(other, model)
        supervisor = server.process.pid
        workers = worker_pids(supervisor)
        assert len(workers) == 2, workers
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not replaced:
            time.sleep(0.5)
            now = worker_pids(supervisor)
            replaced = victim not in now and len(now) == 2
        assert replaced, "uvicorn did not start a new worker"
        with httpx.Client(base_url=server.url, timeout=10) as client:
            # A new connection each time, so that both workers answer some.
            close = {"Connection": "close"}
            answers = [
                client.post("/predict", json={"image": [0] * 784}, headers=close) for _ in range(40)
            ]
            exported = client.get("/metrics").text
        assert {answer.status_code for answer in answers} == {200}
        assert {answer.json()["model"] for answer in answers} == {card["id"]}
        # Whichever worker answered: what each live worker serves, as /metrics adds it up.
        served = re.findall(r'^mnist_model_info\{[^}]*id="([^"]+)"[^}]*\} 1\.0$', exported, re.M)
        assert set(served) == {card["id"]}
        # The dead worker's gauges went with it (liveall series carry the worker's pid).
        assert f'pid="{victim}"' not in exported
        assert f'pid="{min(worker_pids(supervisor))}"' in exported
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0


def test_a_worker_that_cannot_start_makes_the_server_exit_non_zero(
    trained_model_path: Path, tmp_path: Path
) -> None:
    # The model loads (the start-up check passes), but each worker's own set-up fails:
    # its shared state directory is a file. uvicorn's supervisor would exit 0 here.
    not_a_directory = tmp_path / "state"
    not_a_directory.write_text("")
    server = start_server(
        trained_model_path,
        free_port(),
        MNIST_WORKERS="2",
        MNIST_WORKER_STATE_DIR=str(not_a_directory),
    )
    try:
        output, _ = server.communicate(timeout=120)
    finally:
        server.kill()
    assert server.returncode == 1, output[-3000:]
    assert "failed to start" in output


def test_every_response_has_the_hygiene_headers_and_no_server_version(
    trained_model_path: Path,
) -> None:
    with (
        server_process(
            trained_model_path, MNIST_WORKERS="1", MNIST_CORS_ORIGINS="https://app.example"
        ) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        page = client.get("/")
        api = client.post("/predict", json={"image": [0] * 784})
        preflight = client.options(
            "/predict",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        foreign = client.post(
            "/predict", json={"image": [0] * 784}, headers={"Origin": "https://evil.example"}
        )
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "style-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    for response in (page, api):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "server" not in response.headers
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in foreign.headers
    assert "access-control-allow-origin" not in api.headers


def test_the_page_has_no_inline_script_or_style() -> None:
    html = (REPO_ROOT / "service" / "static" / "index.html").read_text()
    assert "<style" not in html
    assert " style=" not in html
    assert "<script>" not in html
    assert "<script src=" in html
    assert "javascript:" not in html


def test_a_missing_key_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        ["python", "-m", "service"],
        env={
            **os.environ,
            "MNIST_API_KEYS_FILE": str(tmp_path / "absent"),
            "MNIST_MODEL_PATH": str(tmp_path / "unused.onnx"),
        },
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    absent = tmp_path / "absent"
    assert done.stderr.strip().splitlines() == [
        f"ERROR:    MNIST_API_KEYS_FILE={absent} cannot be read: No such file or directory"
    ]
