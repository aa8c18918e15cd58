"""Print the requirements of some of Sfumato's extras, one per line, for ``pip install -r``.

The Docker images install dependencies before the source is copied in (so a code change does
not reinstall torch), which needs the dependency list without building the project. This
reads ``pyproject.toml`` with the standard library only and expands the extras, including
self-references such as ``sfumato-server[api,worker,dev]``. Versions are then fixed by the constraints file
(``pip install -c requirements/lock.txt -r ...``)::

    python deploy/docker/requirements.py api            # the API image: no torch
    python deploy/docker/requirements.py worker cuda    # the CUDA worker image
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

#: The repository's pyproject.toml when run from a checkout; in the image build, ./pyproject.toml.
_HERE = Path(__file__).resolve()
_REPO_PYPROJECT = _HERE.parents[2] / "pyproject.toml" if len(_HERE.parents) > 2 else None
DEFAULT_PYPROJECT = _REPO_PYPROJECT if _REPO_PYPROJECT and _REPO_PYPROJECT.is_file() else Path("pyproject.toml")
_SELF = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)\[(?P<extras>[^\]]+)\]\s*$")


def requirements(pyproject: Path, extras: list[str], *, base: bool = True) -> list[str]:
    """The requirement strings of ``extras`` (and the base dependencies), self-references expanded.

    An unknown extra raises ``KeyError`` naming it, so a typo in the Dockerfile fails the build.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    name, optional = project["name"], project.get("optional-dependencies", {})
    found: list[str] = list(project.get("dependencies", [])) if base else []
    seen: set[str] = set()

    def add(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            raise KeyError(f"pyproject.toml has no extra {extra!r}; extras: {', '.join(sorted(optional))}")
        seen.add(extra)
        for requirement in optional[extra]:
            match = _SELF.match(requirement)
            if match and match["name"].lower() == name.lower():
                for inner in match["extras"].split(","):
                    add(inner.strip())
            elif requirement not in found:
                found.append(requirement)

    for extra in extras:
        add(extra)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("extras", nargs="+", help="extras to expand (api, worker, cuda, ...)")
    parser.add_argument("--pyproject", type=Path, default=DEFAULT_PYPROJECT)
    args = parser.parse_args(argv)
    sys.stdout.write("".join(f"{line}\n" for line in requirements(args.pyproject, args.extras)))


if __name__ == "__main__":
    main()
