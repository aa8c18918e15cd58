"""The shipped Prometheus configuration, rules and their unit tests pass ``promtool``."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.prometheus import DEPLOY, RULES, promtool

PROMETHEUS_DIR = DEPLOY / "prometheus"
SOURCES = [p for d in ("core", "api", "worker") for p in (PROMETHEUS_DIR.parents[1] / d).rglob("*.py")]


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    tests = sorted(str(p.relative_to(PROMETHEUS_DIR)) for p in (PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert tests, "no promtool unit tests in deploy/prometheus/tests"
    result = promtool("test", "rules", *tests, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.MULTILINE))
    tested = set()
    for path in (PROMETHEUS_DIR / "tests").glob("*.yml"):
        tested |= set(re.findall(r"alertname: (\w+)", path.read_text()))
    assert alerts and alerts <= tested, f"alerts without a promtool test: {sorted(alerts - tested)}"


def test_rules_use_only_metrics_the_code_exports() -> None:
    exported = _exported_names()
    used = set(re.findall(r"\b(sfumato_[a-z_]+)", RULES.read_text()))
    unknown = {name for name in used if _family(name) not in exported}
    assert not unknown, f"rules refer to metrics nobody exports: {sorted(unknown)}"


def _family(sample: str) -> str:
    """The metric family of a sample name (histogram and counter suffixes removed)."""
    return re.sub(r"_(bucket|sum|count|total)$", "", sample)


def _exported_names() -> set[str]:
    """Metric names defined in the source (strings "sfumato_..."), suffixes removed."""
    names: set[str] = set()
    for path in SOURCES:
        names |= {_family(n) for n in re.findall(r'"(sfumato_[a-z_]+)', Path(path).read_text())}
    return names
