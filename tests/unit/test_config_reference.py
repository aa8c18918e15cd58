"""The configuration reference page is generated from the settings and kept in step with them.

docs/reference/configuration.md is written by ``python scripts/config_reference.py``; these
tests fail when someone adds or changes a setting without regenerating it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from core.config import Settings
from core.settings import ENV_PREFIX, GROUPS

ROOT = Path(__file__).resolve().parents[2]


def _load_generator() -> ModuleType:
    """scripts/ is not a package: load the generator from its file, as `python scripts/...` does."""
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


def test_committed_page_is_the_generated_one() -> None:
    page = generator.PAGE
    assert page.exists(), f"{page} is missing: run `{generator.COMMAND}`"
    assert page.read_text() == generator.render(), (
        f"{page.relative_to(ROOT)} is stale: run `{generator.COMMAND}` and commit the result"
    )


def test_every_setting_is_on_the_page_once() -> None:
    page = generator.render()
    for name in Settings.model_fields:
        row = f"| `{ENV_PREFIX}{name.upper()}` |"
        assert page.count(row) == 1, f"{ENV_PREFIX}{name.upper()} appears {page.count(row)} times on the page"


def test_every_group_is_non_empty_documented_and_titled() -> None:
    sections = [group.section for group in GROUPS]
    assert len(set(sections)) == len(sections) and all(sections)
    for group in GROUPS:
        assert group.model_fields, f"{group.__name__} has no settings"
        assert group.__doc__ and "Read by" in group.__doc__, f"{group.__name__}'s docstring must say who reads it"
        assert f"\n## {group.section}\n" in generator.render()


def test_every_field_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"give these settings a Field(description=...): {missing}"


def test_page_does_not_depend_on_the_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = generator.render()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SFUMATO_MAX_STEPS", "7")
    assert generator.render() == before
    assert str(Path.home()) not in before


def test_defaults_and_bounds_are_shown_readably() -> None:
    page = generator.render()
    assert "| `SFUMATO_S3_BUCKET` | *(unset)* |" in page
    assert "| `SFUMATO_CORS_ALLOW_ORIGINS` | *(empty)* |" in page
    assert "| `SFUMATO_S3_PATH_STYLE` | `true` |" in page
    assert "| `SFUMATO_DATA_DIR` | `~/.cache/sfumato` |" in page
    assert "One of `auto`, `local`, `s3`." in page
    assert "Range: 1 to 64." in page  # max_batch
    assert "Secret: masked when" in page.split("`SFUMATO_S3_SECRET_ACCESS_KEY`")[1].split("\n")[0]


def test_check_mode_reports_a_stale_page(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "docs" / "reference" / "configuration.md"
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    monkeypatch.setattr(generator, "PAGE", stale)
    assert generator.main(["--check"]) == 1  # missing
    assert "run `python scripts/config_reference.py`" in capsys.readouterr().err
    assert generator.main([]) == 0 and stale.read_text() == generator.render()
    assert generator.main(["--check"]) == 0
    stale.write_text(stale.read_text().replace("Redis holding the job queue.", "Redis."))
    assert generator.main(["--check"]) == 1
    assert "configuration.md is stale" in capsys.readouterr().err
