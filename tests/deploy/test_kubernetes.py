"""deploy/kubernetes/: valid against the Kubernetes schemas, wired to the package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from scheduler.cli import CONFIG_ENV, main
from scheduler.config import DATABASE_URL_ENV, parse
from tests.deploy.support import (
    CONTAINER_CONFIG,
    KUBERNETES,
    config_variables,
    load_with_dummy_secrets,
    stop_bound,
    yaml_document,
)
from tests.deploy.test_dockerfile import CONFIG_PATH, only, stages

# The oldest minor version still offered by the big managed services, and the
# newest the installed kubernetes-validate knows.
VERSIONS = ["1.29", latest_version()]
KUSTOMIZATION = KUBERNETES / "kustomization.yaml"
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p != KUSTOMIZATION)


def manifest(kind: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        document
        for path in MANIFESTS
        if (document := yaml_document(path))["kind"] == kind
    ]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def container_port(name: str) -> int:
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    return int(ports[name])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    """Each manifest validates strictly (no unknown fields) against its schema."""
    document = yaml_document(path)
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except SchemaNotFoundError as exc:
        pytest.fail(f"{path.name}: no schema to check it against: {exc}")


def test_schema_check_rejects_an_unknown_field() -> None:
    """The schema check is real: a misspelt field in the Deployment fails it."""
    document = yaml_document(KUBERNETES / "deployment.yaml")
    document["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(document, latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml names exactly the manifests beside it, and the image."""
    kustomization = yaml_document(KUSTOMIZATION)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "labels", "resources", "images"}
    assert sorted(kustomization["resources"]) == [path.name for path in MANIFESTS]
    kinds = {yaml_document(path)["kind"] for path in MANIFESTS}
    wanted = {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"}
    assert kinds == wanted
    images = {image["name"] for image in kustomization["images"]}
    assert images == {container()["image"]}


def test_deployment_runs_two_replicas_of_the_daemon() -> None:
    """Two replicas of `amc-scheduler run`, rolled one at a time."""
    deployment = manifest("Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert container()["args"] == ["run"]
    assert container()["args"][0] in main.commands
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_get_health_on_the_configured_port(
    probe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every probe is GET /health on the port the container config listens on."""
    settings = load_with_dummy_secrets(CONTAINER_CONFIG, monkeypatch)
    check = container()[probe]["httpGet"]
    assert check["path"] == "/health"
    assert container_port(check["port"]) == settings.server.port
    assert settings.server.host == "0.0.0.0"


def test_pods_get_longer_than_the_shutdown_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """terminationGracePeriodSeconds leaves the drain its time before SIGKILL."""
    settings = load_with_dummy_secrets(CONTAINER_CONFIG, monkeypatch)
    assert pod_spec()["terminationGracePeriodSeconds"] >= stop_bound(settings)


def test_container_has_requests_and_limits() -> None:
    """CPU and memory are both requested and limited."""
    resources = container()["resources"]
    for part in ("requests", "limits"):
        assert set(resources[part]) == {"cpu", "memory"}


def test_pods_run_as_the_image_user_without_privileges() -> None:
    """Non-root as the image's USER, no privilege escalation, read-only root."""
    pod = pod_spec()["securityContext"]
    uid, _, gid = only(stages()[1], "USER").partition(":")
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"

    own = container()["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"] for mount in container()["volumeMounts"]}
    assert {"/tmp", "/var/lib/amc-scheduler"} <= mounts


def test_secret_holds_every_variable_the_pod_reads() -> None:
    """The env names the config's ${...} and the database URL, all from the Secret."""
    secret = manifest("Secret")
    env = {item["name"]: item for item in container()["env"]}
    configmap = manifest("ConfigMap")
    wanted = config_variables(configmap["data"]["config.yaml"]) | {DATABASE_URL_ENV}
    for name in wanted:
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == secret["metadata"]["name"]
        assert reference["key"] in secret["stringData"]
        assert "REPLACE-ME" in secret["stringData"][reference["key"]]

    assert env[CONFIG_ENV]["value"] == CONFIG_PATH


def test_configmap_is_the_container_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's config.yaml is deploy/config.container.yaml and validates."""
    text = manifest("ConfigMap")["data"]["config.yaml"]
    assert yaml.safe_load(text) == yaml_document(CONTAINER_CONFIG)
    for name in config_variables(text):
        monkeypatch.setenv(name, f"dummy-{name.lower()}")

    parse(yaml.safe_load(text), "configmap config.yaml")

    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    name = next(n for n, v in volumes.items() if "configMap" in v)
    assert (
        volumes[name]["configMap"]["name"] == manifest("ConfigMap")["metadata"]["name"]
    )
    assert f"{mounts[name]}/config.yaml" == CONFIG_PATH


def test_service_and_budget_select_the_pods() -> None:
    """The Service reaches the http port and the budget keeps one pod up."""
    labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = manifest("Service")["spec"]
    assert service["selector"].items() <= labels.items()
    assert [port["targetPort"] for port in service["ports"]] == ["http"]
    assert container_port("http") == service["ports"][0]["port"]

    budget = manifest("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert 0 < budget["minAvailable"] < manifest("Deployment")["spec"]["replicas"]
