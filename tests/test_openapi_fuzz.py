"""Schemathesis fuzzes the live OpenAPI document against the real server: every operation,
generated from the schema the server serves, every response checked against it.

The documented API must be exactly the one served: a 5xx, a status code or content type the
document does not list, or a body that does not match its schema, is a failure.
"""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.model_files import publish
from tests.server import Server, server_process

pytestmark = pytest.mark.e2e

# Every check that applies but positive_data_acceptance: a schema-valid body is not always
# acceptable here, since what a body must hold goes beyond what JSON Schema can say (random
# bytes as a PNG, `data` that matches its `shape`, floats above 1 with a decimal point).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
)
# Warnings that fail the run too: an operation only ever answered 404, or a schema part
# skipped as unresolvable, is a blind spot where a finding would go unseen. Not among them:
# validation_mismatch and low_valid_rate, which say that most generated bodies were refused,
# as they must be for the reason above (infer `data` that does not match its `shape`).
BLIND_SPOTS = [
    "missing_test_data",
    "unresolvable_reference",
    "unsupported_regex",
    "method_not_allowed",
    "unmatched_filter",
    "missing_deserializer",
    "base_url_mismatch",
]
# Per operation and phase: with ~20 operations, a few hundred cases in all, about two
# minutes on two shared cores.
MAX_EXAMPLES = 12
SEED = 20261202
# Unload leaves the server with nothing to serve until the next load: fuzzed among the
# others, it would turn every later case of every inference operation into a 503 (which the
# document allows, so the run would pass while testing nothing). It is fuzzed on its own, after.
UNLOAD = "/v2/repository/models/{model_name}/unload"


@pytest.fixture(scope="module")
def two_version_server(
    tmp_path_factory: pytest.TempPathFactory, trained_model_path: Path
) -> Iterator[Server]:
    repository = tmp_path_factory.mktemp("fuzzed-repository")
    publish(repository, trained_model_path)
    publish(repository, trained_model_path)
    with server_process(
        trained_model_path,
        MNIST_MODEL_REPOSITORY=str(repository),
        MNIST_WORKERS="1",
        MNIST_MODEL_CONTROL="1",
        # Both versions served, so that /versions/1/... and /versions/2/... answer 200.
        MNIST_VERSION_POLICY="all",
    ) as server:
        yield server


def run_schemathesis(url: str, report: Path, *selection: str) -> tuple[int, str, dict[str, object]]:
    config = report.with_suffix(".toml")
    config.write_text(f"[warnings]\nfail-on = {json.dumps(BLIND_SPOTS)}\n")
    command = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        *selection,
    ]
    done = subprocess.run(
        # In the test's own folder: schemathesis keeps a .schemathesis cache where it runs.
        command,
        cwd=report.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr, json.loads(report.read_text())


def test_every_operation_answers_as_its_openapi_document_says(
    two_version_server: Server, tmp_path: Path
) -> None:
    started = time.monotonic()
    code, output, _ = run_schemathesis(
        two_version_server.url, tmp_path / "run.json", "--exclude-path", UNLOAD
    )
    print(output)
    print(f"schemathesis took {time.monotonic() - started:.0f} s")
    assert code == 0, output[-8000:]
    ready = httpx.get(f"{two_version_server.url}/health/ready", timeout=5)
    assert ready.status_code == 200, "fuzzing left the server unready"


def test_unload_answers_as_documented_and_a_load_brings_the_versions_back(
    two_version_server: Server, tmp_path: Path
) -> None:
    code, output, _ = run_schemathesis(
        two_version_server.url, tmp_path / "unload.json", "--include-path", UNLOAD
    )
    print(output)
    assert code == 0, output[-8000:]
    url = two_version_server.url
    assert httpx.get(f"{url}/health/ready", timeout=5).status_code == 503
    loaded = httpx.post(f"{url}/v2/repository/models/mnist/load", timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["ready_versions"] == ["1", "2"]
