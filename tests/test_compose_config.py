"""docker-compose.yml as written: the API is published on 127.0.0.1 unless told otherwise,
and its containers have memory and process limits. No Docker engine needed."""

import json
import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.server import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
API_SERVICES = ("api", "api-gpu")


def compose_file() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize("service", API_SERVICES)
def test_api_ports_are_published_on_the_address_the_variable_names(service: str) -> None:
    ports = compose_file()["services"][service]["ports"]
    assert ports, f"{service} publishes nothing"
    for port in ports:
        assert str(port).startswith("${MNIST_PUBLISH_ADDRESS:-127.0.0.1}:"), port


def test_api_containers_have_memory_and_pids_limits() -> None:
    api = compose_file()["x-api"]
    assert api["mem_limit"] == "${MNIST_API_MEM_LIMIT:-2g}"
    assert api["pids_limit"] == "${MNIST_API_PIDS_LIMIT:-256}"


def test_the_variables_are_documented() -> None:
    header = COMPOSE_FILE.read_text().split("\nname:", 1)[0]
    readme = (REPO_ROOT / "README.md").read_text()
    for variable in ("MNIST_PUBLISH_ADDRESS", "MNIST_API_MEM_LIMIT", "MNIST_API_PIDS_LIMIT"):
        assert variable in header, f"{variable} is not in docker-compose.yml's header comment"
        assert variable in readme, f"{variable} is not in README.md"


def compose_config(**env: str) -> dict[str, Any]:
    if shutil.which("docker") is None:
        pytest.skip("no docker client: `docker compose config` cannot render the file")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_")}
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 and "is not a docker command" in done.stderr:
        pytest.skip("no `docker compose` v2 plugin: the file cannot be rendered here")
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)
    assert isinstance(rendered, dict)
    return rendered


def test_compose_renders_127_0_0_1_and_the_limits_by_default() -> None:
    api = compose_config()["services"]["api"]
    assert [(p["host_ip"], p["published"], p["target"]) for p in api["ports"]] == [
        ("127.0.0.1", "8000", 8000)
    ]
    assert int(api["mem_limit"]) == 2 * 1024**3
    assert int(api["pids_limit"]) == 256


def test_compose_publishes_on_every_interface_when_told() -> None:
    api = compose_config(MNIST_PUBLISH_ADDRESS="0.0.0.0")["services"]["api"]
    assert [p["host_ip"] for p in api["ports"]] == ["0.0.0.0"]
