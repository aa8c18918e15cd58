"""Every image starts: its entry point imports from exactly the files it contains.

For each Dockerfile stage whose command is ``python -m X``, the files that stage copies from
the build context (``.dockerignore`` applied) are laid out in an empty folder, and a
``python -S`` subprocess imports ``X.__main__`` from there (the API stage also builds its app
with default Settings), then every module of the copied packages. The checkout and any editable
install are out of reach, and only the top-level modules the image's own requirements install
can be found (tests/support/image_imports.py), so a missing file or a missing requirement fails
here with the module's name instead of crash-looping a deployment.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from deploy.docker.requirements import requirements
from tests.support.dockerfile import DOCKERFILE, Stage, assemble, ignore_rules, ignored, resolve
from tests.support.image_imports import Closure, ProbeResult, closure, image_requirements, probe
from tests.support.processes import REPO_ROOT

PYPROJECT = REPO_ROOT / "pyproject.toml"
#: The API's factory and its settings class, built as ``create_app(Settings())``.
APP_FACTORY, SETTINGS = "api.app:create_app", "core.config:Settings"
#: What makes an image a torch image: none of it may reach the API image.
TORCH_STACK = {"torch", "diffusers", "transformers", "xformers"}
#: Left out of every image: dev-only code, training code, the client SDK, the tests.
NEVER_SHIPPED = {"training", "devstack", "client", "sfumato", "tests", "bench"}

RUNTIME_STAGES = {name: stage for name, stage in resolve(DOCKERFILE.read_text()).items() if stage.python_module}


def _describe(what: str, failure: dict[str, str], refused: list[str], trace: bool = True) -> str:
    missing = failure.get("missing")
    why = ""
    if missing:
        top = missing.partition(".")[0]
        why = (
            f"\n  -> {top!r} is installed here but not by the image's requirements"
            if top in refused
            else f"\n  -> {top!r} is not among the files the image copies"
        )
    return f"{what}: {failure['error']}{why}" + (f"\n{failure['trace']}" if trace else "")


#: Probe results by everything a probe sees (see :func:`_probe_key`). The CUDA and CPU worker
#: images copy the same files and, on this machine, resolve to the same installed packages
#: (the CUDA-only ones are absent here either way), so one probe answers for both: the probe
#: is a subprocess importing every module of the image, torch included, the costly part.
_PROBES: dict[str, ProbeResult] = {}


def _probe_key(workdir: Path, module: str, installed: Closure, factory: tuple[str | None, str | None]) -> str:
    """A digest of the probe's whole input: every file's path and bytes, the entry module, the
    distributions it may import and the factory. Equal keys give equal probes."""
    digest = hashlib.sha256(json.dumps([module, sorted(installed.distributions), factory]).encode())
    for path in sorted(p for p in workdir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(workdir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@pytest.fixture(scope="module", params=sorted(RUNTIME_STAGES))
def stage_probe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Stage, ProbeResult]:
    stage = RUNTIME_STAGES[request.param]
    module = stage.python_module
    assert module
    workdir = assemble(stage, tmp_path_factory.mktemp(f"image-{stage.name}"))
    wanted = image_requirements(DOCKERFILE.read_text(), stage.name)
    installed = closure([*requirements(PYPROJECT, list(wanted.extras)), *wanted.packages])
    factory = (APP_FACTORY, SETTINGS) if module == "api" else (None, None)
    key = _probe_key(workdir, module, installed, factory)
    if key not in _PROBES:
        _PROBES[key] = probe(workdir, module, installed, *factory)
    return stage, _PROBES[key]


def test_there_are_images_to_check() -> None:
    assert {"api", "worker", "worker-cpu"} <= set(RUNTIME_STAGES), sorted(RUNTIME_STAGES)


def test_the_entry_point_imports_from_the_image_files(stage_probe: tuple[Stage, ProbeResult]) -> None:
    stage, result = stage_probe
    module = stage.python_module
    assert result.entry is None, _describe(f"stage {stage.name!r}: python -m {module}", result.entry, result.refused)
    assert result.factory is None, _describe(f"stage {stage.name!r}: {APP_FACTORY}", result.factory, result.refused)


def test_every_module_of_the_image_imports(stage_probe: tuple[Stage, ProbeResult]) -> None:
    """Modules imported later (the RQ job function, a lazily built pipeline) must be there too."""
    stage, result = stage_probe
    failures = [_describe(name, failure, result.refused, False) for name, failure in sorted(result.modules.items())]
    assert not failures, f"stage {stage.name!r}:\n" + "\n".join(failures)


def test_each_image_ships_only_its_own_code(stage_probe: tuple[Stage, ProbeResult]) -> None:
    stage, result = stage_probe
    copied = {source.split("/")[0] for copy in stage.copies for source in copy.sources}
    assert not copied & NEVER_SHIPPED, f"stage {stage.name!r} copies {sorted(copied & NEVER_SHIPPED)}"
    assert not set(result.loaded) & NEVER_SHIPPED, sorted(set(result.loaded) & NEVER_SHIPPED)


def test_torch_is_in_the_worker_images_only(stage_probe: tuple[Stage, ProbeResult]) -> None:
    stage, result = stage_probe
    wanted = image_requirements(DOCKERFILE.read_text(), stage.name)
    installed = set(closure([*requirements(PYPROJECT, list(wanted.extras)), *wanted.packages]).distributions)
    if stage.python_module == "api":
        assert not installed & TORCH_STACK, sorted(installed & TORCH_STACK)
        assert not set(result.loaded) & TORCH_STACK, sorted(set(result.loaded) & TORCH_STACK)
    else:
        assert {"torch", "diffusers", "transformers"} <= installed, sorted(installed)


def test_the_probe_sees_only_the_image(tmp_path: Path) -> None:
    """The probe itself: a module installed in this venv but not required by the image is not
    found (nor its metadata), one that is required is; the checkout is out of reach."""
    (tmp_path / "app" / "probe_pkg").mkdir(parents=True)
    (tmp_path / "app" / "probe_pkg" / "__init__.py").write_text("")
    (tmp_path / "app" / "probe_pkg" / "__main__.py").write_text(
        "import importlib.metadata\nimport yaml\nassert importlib.metadata.version('pyyaml')\n"
    )
    bare = probe(tmp_path / "app", "probe_pkg", closure([]))
    assert bare.entry and bare.entry["missing"] == "yaml" and "yaml" in bare.refused, bare.entry
    assert probe(tmp_path / "app", "probe_pkg", closure(["pyyaml"])).entry is None
    (tmp_path / "app" / "probe_pkg" / "__main__.py").write_text("import core\n")
    checkout = probe(tmp_path / "app", "probe_pkg", closure(["pyyaml"]))
    assert checkout.entry and checkout.entry["missing"] == "core", checkout.entry


def test_dockerignore_matching_follows_docker(tmp_path: Path) -> None:
    """The matcher the probe relies on: last match wins, parents match, ``**`` spans folders."""
    rules = ignore_rules("# comment\n*\n!core/\n!requirements/lock.txt\n**/__pycache__\n**/*.pyc\n")
    assert ignored(".venv/bin/python", rules) and ignored("tests/unit/test_x.py", rules)
    assert not ignored("core/config.py", rules) and not ignored("core/sub/x.py", rules)
    assert not ignored("requirements/lock.txt", rules) and ignored("requirements/write_lock.py", rules)
    assert ignored("core/__pycache__/config.cpython-311.pyc", rules) and ignored("core/a/b.pyc", rules)
    assert ignored("x", ignore_rules("/x/\n")) and not ignored("a/x", ignore_rules("x\n"))
    assert ignored("a/b/c.txt", ignore_rules("a/**\n")) and ignored("a/b/c.md", ignore_rules("a/**/*.md\n"))
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__pycache__" / "x.pyc").write_text("")
    (tmp_path / ".dockerignore").write_text("*\n!pkg\n**/__pycache__\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch AS base\nWORKDIR /app\nCOPY pkg pkg\nCMD python -m pkg\n")
    stage = resolve((tmp_path / "Dockerfile").read_text())["base"]
    workdir = assemble(stage, tmp_path / "root", context=tmp_path)
    assert sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*")) == ["pkg", "pkg/__init__.py"]
