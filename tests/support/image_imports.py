"""Import an image's entry point from exactly its files, over exactly its requirements.

An editable install, the checkout on ``sys.path`` or a package that happens to be in the test
venv would all hide a module the image lacks. So :func:`probe` runs ``python -S`` (no ``site``:
no ``.pth`` file, no editable finder) in the assembled folder with
``sys.path = [folder, stdlib, site-packages]``, and replaces the path finder with one that only
finds top-level modules that the image would really have: the standard library, the folder's
own, and those of the distributions its requirements install (closed over their dependencies
as installed here, markers evaluated). Anything else is "not there", exactly as in the image.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.dockerfile import stages


@dataclass(frozen=True)
class ImageRequirements:
    """What a runtime stage's venv installs: ``extras`` of pyproject.toml plus explicit pins."""

    extras: tuple[str, ...]
    packages: tuple[str, ...] = ()


def image_requirements(dockerfile_text: str, stage: str) -> ImageRequirements:
    """Follow ``COPY --from=<build> /opt/venv`` to the build stage's ``pip install -r <list>`` and
    that list to the ``requirements.py <extras> > <list>`` line that writes it."""
    all_stages = stages(dockerfile_text)
    lists: dict[str, tuple[str, ...]] = {}
    for body in all_stages.values():
        for word, rest in body:
            if word == "RUN":
                for match in re.finditer(r"requirements\.py(?:\s+--pyproject\s+\S+)?\s+([\w\s-]+?)\s*>\s*(\S+)", rest):
                    lists[Path(match[2]).name] = tuple(match[1].split())
    sources = [rest for word, rest in all_stages[stage] if word == "COPY" and re.search(r"\s/opt/venv\s", rest + " ")]
    build = re.search(r"--from=(\S+)", sources[-1]) if sources else None
    assert build, f"stage {stage}: no COPY --from=<build stage> /opt/venv"
    runs = " ".join(rest for word, rest in all_stages[build[1]] if word == "RUN")
    listed = re.findall(r"-r\s+(\S+)", runs)
    assert listed, f"stage {build[1]}: no pip install -r <requirements list>"
    extras = tuple(extra for name in listed for extra in lists[Path(name).name])
    packages = tuple(re.findall(r"\"([A-Za-z0-9_.-]+)==", runs))
    return ImageRequirements(extras, packages)


@dataclass
class Closure:
    """Installed distributions a set of requirements pulls in, and the ones not installed here."""

    distributions: dict[str, metadata.Distribution] = field(default_factory=dict)
    absent: set[str] = field(default_factory=set)

    def top_level_modules(self) -> set[str]:
        names: set[str] = set()
        for dist in self.distributions.values():
            names |= _top_level(dist)
        return names


def closure(requirements: list[str]) -> Closure:
    """Close ``requirements`` over the dependencies their installed distributions declare."""
    found = Closure()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(text), "") for text in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            found.absent.add(name)
            continue
        found.distributions[name] = dist
        for text in dist.requires or []:
            for wanted in ("", *requirement.extras):
                todo.append((Requirement(text), wanted))
    return found


def _top_level(dist: metadata.Distribution) -> set[str]:
    """The importable top-level names a distribution installs (top_level.txt and its RECORD)."""
    names = set((dist.read_text("top_level.txt") or "").split())
    for file in dist.files or []:
        parts = file.parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".data")):
            continue
        top = parts[0] if len(parts) > 1 else parts[0].split(".")[0]
        if top.isidentifier():
            names.add(top)
    return names


_PROBE = r"""
import importlib, importlib.machinery, json, pkgutil, sys, traceback
config = json.loads(sys.argv[1])
base = [config["root"], *[p for p in sys.path[1:] if p]]  # the image folder and the standard library
sys.path[:] = [*base, *config["site"]]
allowed, dists = set(config["allowed"]), set(config["distributions"])
refused = set()
PathFinder = importlib.machinery.PathFinder


class ImageFinder:
    '''sys.path's finder, blind to what site-packages holds beyond the image's requirements.'''

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if path is not None:  # a submodule: its parent was allowed
            return PathFinder.find_spec(name, path, target)
        spec = PathFinder.find_spec(name, base, target)
        if spec is not None or name in allowed:
            return spec or PathFinder.find_spec(name, config["site"], target)
        if PathFinder.find_spec(name, config["site"], target) is not None:
            refused.add(name)
        return None

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        for dist in PathFinder.find_distributions(*args, **kwargs):
            name = (dist.metadata["Name"] or "").lower().replace("_", "-").replace(".", "-")
            if name in dists:
                yield dist

    @classmethod
    def invalidate_caches(cls):
        PathFinder.invalidate_caches()

sys.meta_path[:] = [ImageFinder if finder is PathFinder else finder for finder in sys.meta_path]
result = {"entry": None, "factory": None, "modules": {}}


def failure(exc):
    missing = exc.name if type(exc) is ModuleNotFoundError else None
    return {"error": f"{type(exc).__name__}: {exc}", "missing": missing, "trace": traceback.format_exc(limit=-6)}


try:
    importlib.import_module(config["entry"] + ".__main__")
except BaseException as exc:
    result["entry"] = failure(exc)
if config.get("factory") and result["entry"] is None:
    try:
        factory_module, _, factory_name = config["factory"].partition(":")
        settings_module, _, settings_name = config["settings"].partition(":")
        settings = getattr(importlib.import_module(settings_module), settings_name)()
        getattr(importlib.import_module(factory_module), factory_name)(settings)
    except BaseException as exc:
        result["factory"] = failure(exc)
for package in config["packages"]:
    def onerror(name):
        result["modules"][name] = failure(sys.exc_info()[1])
    try:
        top = importlib.import_module(package)
    except BaseException as exc:
        result["modules"][package] = failure(exc)
        continue
    for info in pkgutil.walk_packages(top.__path__, package + ".", onerror=onerror):
        if info.name in result["modules"]:
            continue
        try:
            importlib.import_module(info.name)
        except BaseException as exc:
            result["modules"][info.name] = failure(exc)
result["refused"] = sorted(refused)
result["loaded"] = sorted({m.partition(".")[0] for m in sys.modules})
print("PROBE-RESULT " + json.dumps(result))
"""


@dataclass
class ProbeResult:
    entry: dict[str, str] | None
    factory: dict[str, str] | None
    modules: dict[str, dict[str, str]]
    refused: list[str]
    loaded: list[str]


def site_packages() -> list[str]:
    """The venv's site-packages (pure and platform), without anything a .pth would add."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def probe(
    root: Path, entry: str, installed: Closure, factory: str | None = None, settings: str | None = None
) -> ProbeResult:
    """Import ``entry.__main__`` (then call ``factory(settings())``, then import every module of
    the folder's packages) in a ``python -S`` subprocess, cwd ``root``, that sees only ``root``,
    the standard library and, of site-packages, the modules and metadata of ``installed``."""
    packages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())
    config = {
        "root": str(root),
        "site": site_packages(),
        "allowed": sorted(installed.top_level_modules()),
        "distributions": sorted(installed.distributions),
        "entry": entry,
        "factory": factory,
        "settings": settings,
        "packages": packages,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SFUMATO_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, "-S", "-c", _PROBE, json.dumps(config)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE-RESULT ")]
    assert lines, f"the import probe crashed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    data = json.loads(lines[-1].removeprefix("PROBE-RESULT "))
    return ProbeResult(data["entry"], data["factory"], data["modules"], data["refused"], data["loaded"])
