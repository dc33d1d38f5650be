"""API keys in-process: who may do what, how refusals read, and what is counted."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import KeyFileError, KeyRing, key_id
from service.settings import Settings
from tests.model_files import publish

INFERENCE_KEY = "infer-3f9a1c7e5b2d"
ADMIN_KEY = "admin-8c6e4a2f0d1b"
IMAGE = {"image": [0.0] * 784}
V2_IMAGE = {
    "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [0.0] * 784}]
}
CONFIG = '{"version_policy": {"latest": {"num_versions": 1}}}'


def make_client(repository: Path, **settings: object) -> TestClient:
    return TestClient(
        create_app(
            Settings(
                model_repository=repository,
                device="cpu",
                repository_poll_s=0,
                model_control=True,
                api_keys=INFERENCE_KEY,
                admin_api_keys=ADMIN_KEY,
                **settings,  # type: ignore[arg-type]
            )
        )
    )


@pytest.fixture(scope="module")
def repository(trained_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("repository")
    publish(directory, trained_model_path)
    return directory


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[TestClient]:
    with make_client(repository) as test_client:
        yield test_client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# (method, path, body, what answers errors: "detail" or the protocol's "error")
Route = tuple[str, str, object, str]
INFERENCE_ROUTES: list[Route] = [
    ("POST", "/predict", IMAGE, "detail"),
    ("GET", "/summary", None, "detail"),
    ("POST", "/v2/models/mnist/infer", V2_IMAGE, "error"),
    ("GET", "/v2/models/mnist", None, "error"),
    ("POST", "/v2/repository/index", None, "error"),
]
ADMIN_ROUTES: list[Route] = [
    ("POST", "/v2/repository/models/mnist/load", {"parameters": {"config": CONFIG}}, "error"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), INFERENCE_ROUTES + ADMIN_ROUTES)
def test_no_key_is_a_401_that_says_how_to_send_one(
    client: TestClient, method: str, path: str, body: object, field: str
) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer KEY" in response.json()[field]
    assert response.json()["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(("method", "path", "body", "field"), INFERENCE_ROUTES + ADMIN_ROUTES)
def test_a_wrong_key_is_a_401(
    client: TestClient, method: str, path: str, body: object, field: str
) -> None:
    for headers in (bearer("guess"), {"X-API-Key": "guess"}, {"Authorization": "Basic Z3Vlc3M="}):
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, headers
        assert field in response.json()


@pytest.mark.parametrize(("method", "path", "body", "field"), INFERENCE_ROUTES)
def test_inference_and_admin_keys_may_infer_by_either_header(
    client: TestClient, method: str, path: str, body: object, field: str
) -> None:
    for headers in (bearer(INFERENCE_KEY), {"X-API-Key": INFERENCE_KEY}, bearer(ADMIN_KEY)):
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 200, (headers, response.text)


def test_model_control_takes_an_admin_key_and_nothing_else(client: TestClient) -> None:
    method, path, body, _ = ADMIN_ROUTES[0]
    refused = client.request(method, path, json=body, headers=bearer(INFERENCE_KEY))
    assert refused.status_code == 403
    assert "takes an admin key" in refused.json()["error"]
    allowed = client.request(method, path, json=body, headers={"X-API-Key": ADMIN_KEY})
    assert allowed.status_code == 200, allowed.text
    unload = client.post("/v2/repository/models/mnist/unload", headers=bearer(INFERENCE_KEY))
    assert unload.status_code == 403


def test_health_the_page_metrics_and_docs_stay_open_by_default(client: TestClient) -> None:
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
        assert client.get(path).status_code == 200, path
    for path in ("/", "/static/app.js", "/metrics", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_metrics_and_docs_can_take_a_key_too(repository: Path) -> None:
    with make_client(repository, protect_metrics=True, protect_docs=True) as client:
        for path in ("/metrics", "/docs", "/openapi.json", "/redoc"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=bearer(INFERENCE_KEY)).status_code == 200, path
        assert client.get("/health/ready").status_code == 200


def test_refusals_are_counted_by_reason(repository: Path) -> None:
    with make_client(repository) as client:
        client.post("/predict", json=IMAGE)
        client.post("/predict", json=IMAGE, headers=bearer("guess"))
        client.post("/predict", json=IMAGE, headers=bearer("guess"))
        client.post("/v2/repository/models/mnist/unload", headers=bearer(INFERENCE_KEY))
        metrics = client.get("/metrics").text
    assert 'mnist_auth_failures_total{reason="missing"} 1.0' in metrics
    assert 'mnist_auth_failures_total{reason="invalid"} 2.0' in metrics
    assert 'mnist_auth_failures_total{reason="forbidden"} 1.0' in metrics
    assert INFERENCE_KEY not in metrics


def test_without_keys_everything_is_open_as_before(repository: Path) -> None:
    settings = Settings(model_repository=repository, device="cpu", repository_poll_s=0)
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict", json=IMAGE).status_code == 200
        assert client.get("/summary").status_code == 200


def test_key_files_hold_one_key_a_line_with_comments(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# the web team\n{INFERENCE_KEY}\n\n  other-key  \n  # retired: old-key\n")
    ring = KeyRing.from_settings(Settings(api_keys_file=keys, admin_api_keys=ADMIN_KEY))
    assert ring.find(INFERENCE_KEY) is not None
    assert ring.find("other-key") is not None
    assert ring.find("# the web team") is None
    assert ring.find("# retired: old-key") is None
    found = ring.find(ADMIN_KEY)
    assert found is not None
    assert found.id == key_id(ADMIN_KEY) != ADMIN_KEY
    assert ADMIN_KEY not in repr(ring.__dict__)  # only digests are kept


def test_an_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"MNIST_API_KEYS_FILE=.*cannot be read"):
        KeyRing.from_settings(Settings(api_keys_file=tmp_path / "missing"))
