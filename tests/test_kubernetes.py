"""The Kubernetes manifests (deploy/kubernetes): what can be proven without a cluster.

Every overlay renders with `kubectl kustomize`; the rendered objects match the Kubernetes API
schemas (kubernetes-validate, strict) and the InferenceService KServe's own CRD schema
(../shared/kube); checkov passes on all of them; the objects agree with each other and with
the service (selectors, ports, probe routes, settings, metrics). The pods themselves run in
tests/test_kubernetes_podman.py. kubectl and uv are requirements: without them these tests
fail.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
KUBE_DIR = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("base", "overlays/gpu", "overlays/autoscale-queue", "overlays/kserve", "overlays/local")
# The oldest Kubernetes release still maintained upstream in December 2026, and the newest
# that kubernetes-validate bundles: the manifests must hold on both.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
KSERVE_SCHEMA = "inferenceservice-v1beta1.schema.json.gz"
# checkov is run as a uv tool: its pins would downgrade packaging and pytest in the project.
CHECKOV_VERSION = "3.3.30"
CUSTOM_KINDS = {("serving.kserve.io/v1beta1", "InferenceService")}

Obj = dict[str, Any]


def shared_kube_dir() -> Path:
    return REPO_ROOT.parent / "shared" / "kube"


def require_tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"`{name}` is not on PATH: {hint}", pytrace=False)
    return found


@cache
def render(overlay: str) -> tuple[Obj, ...]:
    kubectl = require_tool("kubectl", "scripts/test.sh installs it (kustomize v5 built in)")
    done = subprocess.run(
        [kubectl, "kustomize", str(KUBE_DIR / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(overlay: str, kind: str) -> list[Obj]:
    return [copy.deepcopy(obj) for obj in render(overlay) if obj["kind"] == kind]


def one(overlay: str, kind: str, name: str | None = None) -> Obj:
    found = [obj for obj in objects(overlay, kind) if name in (None, obj["metadata"]["name"])]
    assert len(found) == 1, f"{overlay}: {len(found)} {kind} objects named {name}"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    """The pod template's spec of a Deployment, Job or CronJob."""
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])


def container(obj: Obj, name: str) -> Obj:
    [found] = [c for c in pod_spec(obj)["containers"] if c["name"] == name]
    return dict(found)


def settings_of(overlay: str, prefix: str) -> dict[str, str]:
    [config] = [
        obj
        for obj in objects(overlay, "ConfigMap")
        if obj["metadata"]["name"].startswith(prefix + "-")
    ]
    return dict(config["data"])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --------------------------------------------------------------------------------------
# Rendering and schemas
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_with_kubectl_kustomize(overlay: str) -> None:
    rendered = render(overlay)
    assert rendered, f"{overlay} rendered nothing"
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "mnist-serving", obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "mnist-serving"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rendered_objects_match_the_kubernetes_api_schemas_strictly(
    overlay: str, version: str
) -> None:
    for obj in render(overlay):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue  # KServe's CRD: checked against its own schema below
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{overlay}: {obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes "
                f"{version}: {exc.message} at {'/'.join(map(str, exc.path))}",
                pytrace=False,
            )


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    # Strictness is the point: a field the API server would prune must not pass.
    deployment = one("base", "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with field validation on: an object
    property it does not declare is an error (structural schemas prune them otherwise)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        tightened["additionalProperties"] = False
    return tightened


@cache
def kserve_validator() -> jsonschema.protocols.Validator:
    path = shared_kube_dir() / KSERVE_SCHEMA
    if not path.is_file():
        pytest.fail(f"KServe's InferenceService schema is missing: {path}", pytrace=False)
    schema = strict(json.loads(gzip.decompress(path.read_bytes())))
    # metadata is the API server's ObjectMeta, which the CRD leaves open.
    schema["properties"]["metadata"] = {"type": "object"}
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def kserve_errors(obj: Obj) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in kserve_validator().iter_errors(obj)
    ]


def test_the_inference_service_matches_kserves_crd_schema() -> None:
    service = one("overlays/kserve", "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert kserve_errors(service) == []


def test_the_kserve_schema_check_rejects_a_misspelt_field() -> None:
    service = one("overlays/kserve", "InferenceService")
    service["spec"]["predictor"]["canaryTrafficPercnt"] = 10
    assert kserve_errors(service), "a misspelt predictor field passed KServe's schema"


# --------------------------------------------------------------------------------------
# checkov
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rendered")
    for overlay in OVERLAYS:
        name = overlay.replace("/", "-") + ".yaml"
        (directory / name).write_text(yaml.safe_dump_all(render(overlay), sort_keys=False))
    return directory


def test_checkov_passes_on_every_rendered_overlay(rendered_dir: Path) -> None:
    uv = require_tool("uv", "scripts/test.sh installs it")
    done = subprocess.run(
        [
            uv,
            "tool",
            "run",
            "--from",
            f"checkov=={CHECKOV_VERSION}",
            "checkov",
            "--directory",
            str(rendered_dir),
            "--framework",
            "kubernetes",
            "--output",
            "json",
        ],
        # BC_SKIP_MAPPING: offline, checkov must not fetch its guideline mapping.
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.stdout.strip(), f"checkov printed nothing ({done.returncode}):\n{done.stderr}"
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for one_report in reports
        for check in one_report["results"]["failed_checks"]
    ]
    assert failed == [], "checkov failed:\n" + "\n".join(failed)
    passed = sum(int(one_report["summary"]["passed"]) for one_report in reports)
    assert passed > 500, f"checkov ran only {passed} checks: did it read the manifests?"
    assert done.returncode == 0, done.stderr


def skip_annotations(obj: Obj) -> dict[str, str]:
    annotations = obj["metadata"].get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith("checkov.io/skip")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_checkov_suppression_gives_its_reason(overlay: str) -> None:
    for obj in render(overlay):
        for key, value in skip_annotations(obj).items():
            check, _, reason = value.partition("=")
            assert re.fullmatch(r"CKV2?_K8S_\d+", check), f"{key}: {value}"
            assert len(reason.split()) >= 6, f"{obj['metadata']['name']} {key}: no reason given"
            # Suppressions of the host's network namespace are for the test-only overlay.
            if check == "CKV_K8S_19":
                assert overlay == "overlays/local", f"{overlay} shares the host network"


# --------------------------------------------------------------------------------------
# The base: the API pods
# --------------------------------------------------------------------------------------


def api_routes() -> set[str]:
    from service.app import create_app
    from service.settings import Settings

    # The OpenAPI document lists every route (included routers too) without starting the app.
    app = create_app(Settings(model_repository=Path("/nonexistent")))
    return set(app.openapi()["paths"])


def test_the_api_pod_is_unprivileged_with_a_read_only_root_and_a_writable_tmp() -> None:
    deployment = one("base", "Deployment", "mnist-api")
    spec = pod_spec(deployment)
    assert spec["automountServiceAccountToken"] is False
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == 10001  # the image's user
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    api = container(deployment, "api")
    security = api["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {mount["mountPath"]: mount for mount in api["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    # Seen under podman: the service dies at start without a writable /tmp.
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    repository = mounts["/models"]
    assert repository.get("readOnly") is True
    claim = volumes[repository["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = one("base", "PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_api_runs_one_worker_on_one_cpu_from_the_repository() -> None:
    deployment = one("base", "Deployment", "mnist-api")
    api = container(deployment, "api")
    [source] = api["envFrom"]
    settings = settings_of("base", "mnist-api-settings")
    assert source["configMapRef"]["name"].startswith("mnist-api-settings-")  # hashed name
    assert settings["MNIST_WORKERS"] == "1"
    assert settings["MNIST_MODEL_REPOSITORY"] == "/models"
    resources = api["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "1"
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


@pytest.mark.parametrize("overlay", ["base", "overlays/kserve", "overlays/local"])
def test_every_setting_in_the_config_maps_is_one_the_service_knows(overlay: str) -> None:
    from service.settings import Settings

    known = {f"MNIST_{name.upper()}" for name in Settings.model_fields}
    settings = settings_of(overlay, "mnist-api-settings")
    assert set(settings) - known == set()
    # And each value parses: a typo in a value must fail here, not in the cluster.
    Settings.model_validate({key.removeprefix("MNIST_").lower(): v for key, v in settings.items()})


def test_the_probes_ask_the_health_routes_on_the_serving_port() -> None:
    api = container(one("base", "Deployment", "mnist-api"), "api")
    routes = api_routes()
    [port] = api["ports"]
    probes = {kind: api[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe")}
    probes["readinessProbe"] = api["readinessProbe"]["httpGet"]
    # Start-up and liveness ask whether the process is up: an empty repository (the first
    # training still running) must not get the pod restarted. Readiness waits for a model.
    assert probes["startupProbe"]["path"] == probes["livenessProbe"]["path"] == "/health/live"
    assert probes["readinessProbe"]["path"] == "/health/ready"
    for probe in probes.values():
        assert probe["path"] in routes
        assert probe["port"] in (port["name"], port["containerPort"])
    settings = settings_of("base", "mnist-api-settings")
    assert int(settings["MNIST_PORT"]) == port["containerPort"]


@pytest.mark.parametrize("overlay", ["base", "overlays/kserve"])
def test_the_grace_period_outlasts_the_services_own_drain(overlay: str) -> None:
    settings = settings_of(overlay, "mnist-api-settings")
    drain_s = float(settings["MNIST_DRAIN_DELAY_S"]) + float(settings["MNIST_DRAIN_TIMEOUT_S"])
    if overlay == "base":
        deployment = one(overlay, "Deployment", "mnist-api")
        grace_s = pod_spec(deployment)["terminationGracePeriodSeconds"]
        # The service drains on SIGTERM itself: a preStop sleep would only add to the delay.
        assert "lifecycle" not in container(deployment, "api")
    else:
        predictor = one(overlay, "InferenceService", "mnist")["spec"]["predictor"]
        grace_s = predictor["terminationGracePeriodSeconds"]
    # Not-ready-but-serving delay, then requests in flight, then a margin before SIGKILL.
    assert grace_s >= drain_s + 5
    assert float(settings["MNIST_DRAIN_DELAY_S"]) >= 5, "endpoints take seconds to update"


# Issue 14's limits: an operator tunes these per pod, so the manifests state them.
OVERLOAD_SETTINGS = (
    "MNIST_REQUEST_TIMEOUT_MS",
    "MNIST_MAX_INFLIGHT_REQUESTS",
    "MNIST_MAX_CONNECTIONS",
    "MNIST_LISTEN_BACKLOG",
    "MNIST_HEADER_TIMEOUT_S",
    "MNIST_BODY_TIMEOUT_S",
    "MNIST_KEEP_ALIVE_S",
    "MNIST_MAX_HEADER_BYTES",
    "MNIST_DECODE_MEMORY_BYTES",
    "MNIST_MAX_IMAGE_PIXELS",
    "MNIST_MAX_IMAGE_BYTES",
)
# What the worker takes at rest (123 MB measured, README "Scale"), with a margin: the
# decode budget must fit beside it in the container's memory limit.
WORKER_AT_REST_BYTES = 160 * 2**20


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in sorted(units.items(), key=lambda unit: -len(unit[0])):
        if quantity.endswith(suffix):
            return int(float(quantity.removesuffix(suffix)) * factor)
    return int(quantity)


def api_container(overlay: str) -> Obj:
    if overlay == "overlays/kserve":
        predictor = one(overlay, "InferenceService", "mnist")["spec"]["predictor"]
        [found] = predictor["containers"]
        return dict(found)
    return container(one(overlay, "Deployment", "mnist-api"), "api")


@pytest.mark.parametrize("overlay", ["base", "overlays/kserve"])
def test_the_api_settings_state_every_overload_limit(overlay: str) -> None:
    settings = settings_of(overlay, "mnist-api-settings")
    assert [name for name in OVERLOAD_SETTINGS if name not in settings] == []


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu", "overlays/kserve"])
def test_the_decode_budget_fits_in_the_memory_limit_beside_the_worker(overlay: str) -> None:
    settings = settings_of(overlay, "mnist-api-settings")
    budget = int(settings["MNIST_DECODE_MEMORY_BYTES"])
    limit = memory_bytes(api_container(overlay)["resources"]["limits"]["memory"])
    workers = int(settings["MNIST_WORKERS"])
    assert workers * budget + WORKER_AT_REST_BYTES <= limit
    # An image bigger than the whole budget could never be admitted.
    assert int(settings["MNIST_MAX_IMAGE_BYTES"]) <= budget


@pytest.mark.parametrize("overlay", ["base", "overlays/kserve"])
def test_a_request_admitted_before_sigterm_ends_within_the_drain(overlay: str) -> None:
    settings = settings_of(overlay, "mnist-api-settings")
    deadline_s = float(settings["MNIST_REQUEST_TIMEOUT_MS"]) / 1000
    assert 0 < deadline_s <= float(settings["MNIST_DRAIN_TIMEOUT_S"])
    # Its headers and body must be able to arrive before the drain ends too.
    assert float(settings["MNIST_HEADER_TIMEOUT_S"]) <= float(settings["MNIST_DRAIN_TIMEOUT_S"])


def test_service_pdb_hpa_and_network_policy_select_the_api_pods() -> None:
    deployment = one("base", "Deployment", "mnist-api")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == {
        key: labels[key] for key in deployment["spec"]["selector"]["matchLabels"]
    }
    service = one("base", "Service", "mnist-api")
    assert matches(service["spec"]["selector"], labels)
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] == container(deployment, "api")["ports"][0]["name"]
    pdb = one("base", "PodDisruptionBudget", "mnist-api")
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = one("base", "HorizontalPodAutoscaler", "mnist-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mnist-api",
    }
    # Two pods at least, so that the PDB's one disruption leaves one serving.
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["maxUnavailable"] == 1
    [cpu] = hpa["spec"]["metrics"]
    assert cpu["resource"]["name"] == "cpu"
    policies = {p["metadata"]["name"]: p for p in objects("base", "NetworkPolicy")}
    assert policies["mnist-default-deny"]["spec"]["podSelector"] == {}
    api_policy = policies["mnist-api"]["spec"]
    assert matches(api_policy["podSelector"]["matchLabels"], labels)
    assert api_policy["egress"] == [], "the API opens no connection"


# --------------------------------------------------------------------------------------
# The base: training
# --------------------------------------------------------------------------------------


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


@pytest.mark.parametrize(
    ("kind", "name"), [("Job", "mnist-train-first"), ("CronJob", "mnist-retrain")]
)
def test_training_publishes_into_the_repository_behind_the_gate(kind: str, name: str) -> None:
    obj = one("base", kind, name)
    train = container(obj, "train")
    assert train["command"] == ["mnist-train"]
    args = train["args"]
    assert option(args, "--repository") == "/models"
    assert float(option(args, "--min-accuracy")) >= 0.98
    spec = pod_spec(obj)
    assert spec["restartPolicy"] == "Never"
    mounts = {mount["mountPath"]: mount for mount in train["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert not mounts["/models"].get("readOnly")
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"] == {
        "claimName": "mnist-model-repository"
    }
    assert train["securityContext"]["readOnlyRootFilesystem"] is True
    # Every place TensorFlow, Keras and Matplotlib write to is on the scratch emptyDir.
    scratch = next(path for path, m in mounts.items() if "emptyDir" in volumes[m["name"]])
    settings = settings_of("base", "mnist-train-settings")
    for variable in ("HOME", "TMPDIR", "MPLCONFIGDIR", "KERAS_HOME"):
        assert settings[variable].startswith(scratch), variable
    policy = one("base", "NetworkPolicy", "mnist-train")
    labels = obj["spec"]["jobTemplate" if kind == "CronJob" else "template"]
    if kind == "CronJob":
        labels = labels["spec"]["template"]
    assert matches(policy["spec"]["podSelector"]["matchLabels"], labels["metadata"]["labels"])


def test_the_first_job_and_the_cron_job_train_alike() -> None:
    first = pod_spec(one("base", "Job", "mnist-train-first"))
    weekly = pod_spec(one("base", "CronJob", "mnist-retrain"))
    assert first == weekly


def test_retraining_never_runs_twice_at_once() -> None:
    cron = one("base", "CronJob", "mnist-retrain")
    # Two trainers would race for the same next version number.
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


# --------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------


def test_the_gpu_overlay_asks_for_one_gpu_with_the_gpu_image() -> None:
    deployment = one("overlays/gpu", "Deployment", "mnist-api")
    api = container(deployment, "api")
    assert api["image"].endswith(":service-gpu")
    assert api["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "MNIST_DEVICE", "value": "cuda"} in api["env"]
    tolerations = pod_spec(deployment)["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    # The trainer keeps the CPU image (tensorflow-cpu).
    assert container(one("overlays/gpu", "Job"), "train")["image"].endswith(":train")


def adapter_rules() -> list[Obj]:
    values = yaml.safe_load(
        (KUBE_DIR / "overlays/autoscale-queue/prometheus-adapter-values.yaml").read_text()
    )
    return list(values["rules"]["custom"])


def exported_metric_names() -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    from service.metrics import Metrics

    metrics = Metrics()
    # Labelled series appear once a version has served: have version 1 wait once.
    metrics.of_version(1).queue_wait.observe(0.001)
    text = metrics.render().decode()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_the_queue_hpa_scales_on_the_adapter_metric_from_the_services_own_histogram() -> None:
    hpa = one("overlays/autoscale-queue", "HorizontalPodAutoscaler", "mnist-api")
    pods = [metric["pods"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods"]
    [queue] = pods
    [rule] = adapter_rules()
    assert queue["metric"]["name"] == rule["name"]["as"]
    assert queue["target"]["type"] == "AverageValue"
    series = set(re.findall(r"\b(mnist_[a-z_]+)\{", rule["seriesQuery"] + rule["metricsQuery"]))
    assert series == {"mnist_queue_wait_seconds_sum", "mnist_queue_wait_seconds_count"}
    exported = exported_metric_names()
    assert series <= exported, f"the service exports none of {series - exported}"
    # The adapter maps the series to pods in the API's namespace.
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_the_kserve_overlay_replaces_the_deployment_with_an_inference_service() -> None:
    kinds = {obj["kind"] for obj in render("overlays/kserve")}
    assert not kinds & {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    # The model repository and its training stay.
    assert {"PersistentVolumeClaim", "Job", "CronJob", "InferenceService"} <= kinds
    predictor = one("overlays/kserve", "InferenceService", "mnist")["spec"]["predictor"]
    assert 0 < predictor["canaryTrafficPercent"] < 100
    assert 2 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["containerConcurrency"] >= predictor["scaleTarget"] > 0
    [api] = predictor["containers"]
    [port] = api["ports"]
    settings = settings_of("overlays/kserve", "mnist-api-settings")
    assert int(settings["MNIST_PORT"]) == port["containerPort"] == 8080
    assert api["envFrom"][0]["configMapRef"]["name"] in {
        obj["metadata"]["name"] for obj in objects("overlays/kserve", "ConfigMap")
    }
    routes = api_routes()
    assert "/v2/models/{model_name}/infer" in routes
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = api[kind]["httpGet"]
        assert probe["path"] in routes
        assert probe["port"] == port["containerPort"]
    assert api["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {mount["mountPath"]: mount for mount in api["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    volumes = {volume["name"]: volume for volume in predictor["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    claim = volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim in {
        obj["metadata"]["name"] for obj in objects("overlays/kserve", "PersistentVolumeClaim")
    }
    # The base's default-deny policy would cut the predictor off without its own policy.
    policy = one("overlays/kserve", "NetworkPolicy", "mnist-predictor")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "mnist"
    }


def local_pods() -> Iterator[Obj]:
    for kind in ("Deployment", "Job", "CronJob"):
        yield from objects("overlays/local", kind)


def test_the_local_overlay_changes_only_what_a_cluster_provides() -> None:
    for obj in local_pods():
        spec = pod_spec(obj)
        base = pod_spec(one("base", obj["kind"], obj["metadata"]["name"]))
        assert spec["hostNetwork"] is True
        assert spec["securityContext"] == base["securityContext"]
        for name, local in ((c["name"], c) for c in spec["containers"]):
            [original] = [c for c in base["containers"] if c["name"] == name]
            assert local["securityContext"] == original["securityContext"]
            assert local["imagePullPolicy"] == "Never"
        assert "persistentVolumeClaim" not in json.dumps(spec)
    assert objects("overlays/local", "PersistentVolumeClaim") == []
    settings = settings_of("overlays/local", "mnist-api-settings")
    assert settings["MNIST_HOST"] == "127.0.0.1"
    assert settings["MNIST_PORT"] not in {"8000", "18000"}


def test_the_readme_deploy_section_names_every_overlay_and_the_hpa_bounds() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "## Deploy on Kubernetes" in readme
    section = readme.split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    for overlay in OVERLAYS:
        assert f"`{overlay}/`" in section, f"the README does not mention {overlay}"
    hpa = one("base", "HorizontalPodAutoscaler", "mnist-api")["spec"]
    assert f"`maxReplicas: {hpa['maxReplicas']}`" in section
    assert f"between {hpa['minReplicas']} replicas" in section
    [cpu] = hpa["metrics"]
    assert f"at {cpu['resource']['target']['averageUtilization']} % of its CPU" in section
