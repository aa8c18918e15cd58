"""Write requirements/lock.txt from the current virtualenv (``make lock``).

The lock is a pip constraints file: exact versions of everything ``make test`` put in the
venv (both distributions: sfumato-server with all its extras, and the client sfumato), so the
API image, the worker images and CI all install what the tests ran against.
torch loses its local label (``+cpu``) so the CUDA build of the same release satisfies it too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HEADER = """\
# Exact versions of every dependency that `make test` installs (./client and .[api,worker,dev,test,docs]),
# as tested. Used as pip constraints (-c), so any subset (API image, worker image, `make run`, the client
# SDK) installs these same versions.
# Python 3.11, Linux x86_64. torch is listed without its local label (+cpu / +cu128): the CPU and CUDA
# builds of 2.13.0 both satisfy it. Regenerate with `make lock` after changing pyproject.toml; audit with
# `python -m bench.pip_audit` (bench/results/pip-audit.json).
"""


def main() -> None:
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    pins = [re.sub(r"^(torch==[^+]+)\+\S+$", r"\1", line) for line in frozen if "==" in line]
    pins = [line for line in pins if not line.lower().startswith(("sfumato==", "sfumato-server==", "sfumato_server=="))]
    out = Path(__file__).resolve().parent / "lock.txt"
    out.write_text(HEADER + "\n".join(sorted(pins, key=str.lower)) + "\n")
    print(f"wrote {out} ({len(pins)} pins)")


if __name__ == "__main__":
    main()
