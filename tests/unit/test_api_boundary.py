"""The API process stays torch-free: importing every api/ module pulls in no torch, diffusers
or worker/ (the API image has none of them)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.processes import REPO_ROOT

CHECK = """
import importlib, pkgutil, sys
import api
for info in pkgutil.walk_packages(api.__path__, "api."):
    importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "worker"))
print(",".join(bad))
"""


def test_no_api_module_imports_torch_diffusers_or_the_worker() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


SDK_CHECK = """
import importlib, pkgutil, sys
import sfumato
for info in pkgutil.walk_packages(sfumato.__path__, "sfumato."):
    importlib.import_module(info.name)
server_side = ("core", "api", "worker", "torch", "redis", "rq", "fastapi", "boto3", "starlette", "PIL")
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in server_side)))
"""


def test_the_sdk_needs_only_httpx_and_pydantic() -> None:
    """``pip install sfumato`` (the base install) has httpx and pydantic only: no SDK module may
    import the server side, and Pillow is imported only when ``to_pil()`` is called."""
    out = subprocess.run([sys.executable, "-c", SDK_CHECK], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
