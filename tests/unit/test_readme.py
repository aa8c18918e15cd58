"""The README's configuration table and commands stay in step with the code."""

from __future__ import annotations

from pathlib import Path

from core.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [f"SFUMATO_{name.upper()}" for name in Settings.model_fields if f"`SFUMATO_{name.upper()}`" not in README]
    assert not missing, f"add these to the README's configuration table: {missing}"


def test_readme_shows_the_two_commands_and_ci_calls_make_test() -> None:
    assert "make run" in README and "make test" in README
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in ci
