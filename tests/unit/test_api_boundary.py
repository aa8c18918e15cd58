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
