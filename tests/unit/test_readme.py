"""The README stays the one page a newcomer reads in five minutes, and says what runs.

It shows the two commands, a first request the built-in model understands, and links that
lead somewhere; the manual lives in docs/ (tests/unit/test_docs.py builds it), and the
configuration reference is generated (tests/unit/test_config_reference.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from core.config import Settings
from core.prompt_guide import SHAPES_PROMPT_GUIDE

ROOT = Path(__file__).resolve().parents[2]
README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
CONFIGURATION_PAGE = ROOT / "docs" / "reference" / "configuration.md"

#: Longest README we accept: past this it is turning back into the manual.
MAX_LINES = 250
#: Markdown links and images: [text](target) / ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: Prompts the README sends to the built-in model: curl bodies, the SDK and the CLI.
PROMPT = re.compile(r'(?:"prompt": |generate\(|generate )"([^"]+)"')
#: Words a shapes caption uses around the vocabulary (Scene.caption in training/shapes/scenes.py).
GLUE = {"a", "an", "and", "at", "the", "in", "on", "background"}


def test_every_setting_is_on_the_configuration_page() -> None:
    page = CONFIGURATION_PAGE.read_text()
    missing = [f"SFUMATO_{name.upper()}" for name in Settings.model_fields if f"`SFUMATO_{name.upper()}`" not in page]
    assert not missing, f"not on docs/reference/configuration.md (run python scripts/config_reference.py): {missing}"


def test_readme_shows_the_two_commands_and_ci_calls_make_test() -> None:
    assert "make run" in README and "make test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_is_one_short_page() -> None:
    lines = len(README.splitlines())
    assert lines < MAX_LINES, f"README.md has {lines} lines (< {MAX_LINES}): move the detail into docs/"


def test_every_relative_link_in_the_readme_points_at_a_file() -> None:
    targets = [t for t in LINK.findall(README) if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    assert targets, "the README links into docs/"
    broken = [t for t in targets if not (README_PATH.parent / t.split("#", 1)[0]).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def test_readme_prompts_use_only_words_the_shapes_model_knows() -> None:
    """make run serves the shapes model: a README prompt outside its words draws something else."""
    guide = SHAPES_PROMPT_GUIDE
    known = set(guide.colours) | set(guide.shapes) | set(guide.sizes) | GLUE
    known |= {word for position in guide.positions for word in position.split()}
    prompts = PROMPT.findall(README)
    assert prompts, "the README shows a first request"
    for prompt in prompts:
        unknown = [word for word in prompt.split() if word not in known]
        assert not unknown, f"{prompt!r}: the shapes model does not know {unknown}"
