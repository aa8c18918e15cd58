"""A server script installed without its extra exits 2 with one line naming the extra to
install (core/script_extras.py), never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.script_extras import missing_modules, require_extra
from tests.support.processes import REPO_ROOT

#: Runs an entry point with some top-level modules made unimportable, as on an install without them.
WITHOUT = """
import importlib.machinery, runpy, sys
blocked = set(sys.argv[2].split(","))
PathFinder = importlib.machinery.PathFinder
class Blind:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in blocked else PathFinder.find_spec(name, path, target)
    @classmethod
    def invalidate_caches(cls):
        PathFinder.invalidate_caches()
sys.meta_path[:] = [Blind if finder is PathFinder else finder for finder in sys.meta_path]
for name in [m for m in sys.modules if m.partition(".")[0] in blocked]:
    del sys.modules[name]
runpy.run_module(sys.argv[1], run_name="__main__", alter_sys=True)
"""


def test_present_modules_pass_and_missing_ones_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    require_extra("sfumato-x", "x", ("json", "sys"))
    assert missing_modules(("json", "no_such_module_here")) == ["no_such_module_here"]
    with pytest.raises(SystemExit) as exit_info:
        require_extra("sfumato-x", "x", ("json", "no_such_module_here"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "sfumato-x needs the [x] extra: pip install 'sfumato-server[x]' (missing: no_such_module_here)\n"


@pytest.mark.parametrize(
    ("module", "blocked", "script", "extra"),
    [("api", "fastapi,uvicorn", "sfumato-api", "api"), ("worker", "torch,diffusers", "sfumato-worker", "worker")],
)
def test_an_entry_point_without_its_extra_says_which_to_install(
    module: str, blocked: str, script: str, extra: str
) -> None:
    """The check fires before any import that would fail."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT, module, blocked],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script} needs the [{extra}] extra: "), done.stderr
    assert f"pip install 'sfumato-server[{extra}]'" in lines[0]
