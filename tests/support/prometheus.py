"""A real Prometheus (Debian package ``prometheus``) for tests: promtool, and a server on loopback.

``make test`` installs the package when it is missing and it can
(``deploy/prometheus/ensure-prometheus.sh``); where it cannot, tests that need it are skipped
with the reason, never failed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.net import free_port
from tests.support.processes import REPO_ROOT, ServiceProcess, wait_until

DEPLOY = REPO_ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "sfumato-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "sfumato-dashboard.json"
INSTALL_HINT = "run deploy/prometheus/ensure-prometheus.sh as root, or apt-get install prometheus"


def binary_or_skip(name: str) -> str:
    """The path of ``promtool`` / ``prometheus``, or skip the test saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({INSTALL_HINT})")
    return path


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = binary_or_skip("promtool")
    return subprocess.run([tool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


def grafana_expr(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, so Prometheus can run it."""
    return expr.replace("$__rate_interval", "1m").replace('"$model"', '".*"')


@dataclass
class PrometheusServer:
    url: str
    process: ServiceProcess

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now (an error fails the test)."""
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` now, or None while it has none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def get(self, path: str) -> Any:
        resp = httpx.get(f"{self.url}{path}", timeout=10)
        resp.raise_for_status()
        return resp.json()["data"]

    def stop(self) -> None:
        self.process.stop()


def start_prometheus(tmp: Path, scrape: dict[str, list[str]], rule_files: list[Path] = ()) -> PrometheusServer:
    """Prometheus on a free loopback port scraping ``{job: [host:port, ...]}`` every second,
    with its data in ``tmp``. Stopped by PID (``.stop()``)."""
    binary = binary_or_skip("prometheus")
    tmp.mkdir(parents=True, exist_ok=True)
    lines = ["global:", "  scrape_interval: 1s", "  evaluation_interval: 1s", "rule_files:"]
    lines += [f"  - {path}" for path in rule_files] or ["  []"]
    lines.append("scrape_configs:")
    for job, targets in scrape.items():
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: {targets!r}"]
    config = tmp / "prometheus.yml"
    config.write_text(re.sub(r"'", '"', "\n".join(lines)) + "\n")
    port = free_port()
    log_path = tmp / "prometheus.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", ServiceProcess("prometheus", proc, log_path))

    def ready() -> bool:
        try:
            return httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 30, "prometheus to be ready", server.process)
    return server
