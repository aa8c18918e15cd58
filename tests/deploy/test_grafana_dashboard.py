"""The Grafana dashboard is well formed (Grafana itself cannot be installed here): its layout,
its variables, and every query, which must parse as PromQL (checked by promtool) and use only
metrics the code exports. The e2e Prometheus test also runs every query against live data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_prometheus_rules import _exported_names, _family
from tests.support.prometheus import DASHBOARD, grafana_expr, promtool

PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"}
#: What the issue asks the dashboard to show, as metric families each must use.
REQUIRED = {
    "throughput": {"sfumato_images_generated", "sfumato_jobs_finished"},
    "latency percentiles": {"sfumato_job_latency_seconds", "sfumato_http_request_duration_seconds"},
    "queue depth and age": {"sfumato_queue_depth", "sfumato_queue_oldest_job_age_seconds"},
    "batch fill": {"sfumato_batch_fill_ratio"},
    "errors by code": {"sfumato_jobs_finished"},
    "GPU memory": {"sfumato_gpu_memory_allocated_bytes", "sfumato_gpu_memory_reserved_bytes"},
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p["targets"]]


def test_dashboard_has_identity_and_variables(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "sfumato-overview" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query" and variables["model"]["includeAll"]


def test_panels_are_laid_out_on_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        grid = panel["gridPos"]
        assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells


def test_every_panel_queries_prometheus_through_the_variable(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard):
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and "sfumato_" in target["expr"], (panel["title"], target)


def test_dashboard_shows_what_operators_need(dashboard: dict[str, Any]) -> None:
    used = {_family(n) for expr in _exprs(dashboard) for n in re.findall(r"\b(sfumato_[a-z_]+)", expr)}
    for topic, families in REQUIRED.items():
        assert families <= used, f"the dashboard lacks {topic}: {sorted(families - used)}"
    unknown = used - _exported_names()
    assert not unknown, f"the dashboard refers to metrics nobody exports: {sorted(unknown)}"


def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    # promtool parses rule expressions with Prometheus' own parser: one recording rule per query.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": grafana_expr(e)} for i, e in enumerate(_exprs(dashboard))
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
