"""Audit the installed dependencies with pip-audit and record exactly what happened.

    python -m bench.pip_audit        # writes bench/results/pip-audit.json

The audited set is this virtualenv (``make install``: ``.[api,worker,test,dev]`` with torch
pinned), i.e. the exact versions the tests ran against; the project itself (editable) is
skipped. Both vulnerability services are tried: PyPI's JSON API (pip-audit's default) and
OSV. Where a service cannot be reached, or answers nothing for a package, the result says so
per package instead of reporting a clean audit that did not happen.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "pip-audit.json"


def _pip_audit(service: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        proc = subprocess.run(
            [sys.executable, "-m", "pip_audit", "--vulnerability-service", service, "--format", "json",
             "--progress-spinner", "off", "--skip-editable", "--output", str(out)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        report = json.loads(out.read_text()) if out.exists() and out.stat().st_size else None
    stderr_lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    result: dict[str, Any] = {"service": service, "exit_code": proc.returncode}
    if report is None:
        result["error"] = stderr_lines[-1][:500] if stderr_lines else "no output"
        return result
    deps = report["dependencies"]
    skipped = [d for d in deps if d.get("skip_reason")]
    vulnerable = [d for d in deps if d.get("vulns")]
    reasons = Counter(
        "marked editable" if "editable" in d["skip_reason"] else "not found on the vulnerability service"
        for d in skipped
    )
    result.update(
        dependencies=len(deps),
        audited=len(deps) - len(skipped),
        skipped=len(skipped),
        skip_reasons=dict(reasons),
        vulnerable_packages=len(vulnerable),
        vulnerabilities=[
            {"package": d["name"], "version": d["version"], "id": v["id"], "fix_versions": v.get("fix_versions", [])}
            for d in vulnerable
            for v in d["vulns"]
        ],
        conclusive=len(deps) - len(skipped) > 0 and not [r for r in reasons if r != "marked editable"],
        stderr_tail=stderr_lines[-1][:300] if stderr_lines else "",
    )
    return result


def _probe(url: str) -> str:
    """What a plain GET of ``url`` answers from this machine (status or the connection error)."""
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable: {getattr(exc, 'reason', exc)}"


#: The packages that parse untrusted input in the API process. Spot-checked one by one through
#: the project JSON (``/pypi/<name>/json``), whose ``vulnerabilities`` cover the LATEST release
#: only: a package counts as checked when the installed version is that release.
SPOT_CHECK = ("fastapi", "starlette", "uvicorn", "h11", "httptools", "pillow", "pydantic", "python-multipart")


def _spot_check(installed: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for name in SPOT_CHECK:
        row: dict[str, Any] = {"package": name, "installed": installed.get(name)}
        try:
            with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=20) as resp:
                data = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            rows.append({**row, "result": f"unreachable: {exc}"})
            continue
        latest = data["info"]["version"]
        vulns = [v["id"] for v in data.get("vulnerabilities", []) if not v.get("withdrawn")]
        if installed.get(name) == latest:
            row["result"] = f"latest release; known vulnerabilities: {vulns or 'none'}"
        else:
            row["result"] = f"not the latest ({latest}); not checkable through this endpoint"
        rows.append(row)
    return rows


def main() -> None:
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout.split()
    report = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "pip_audit": subprocess.run(
            [sys.executable, "-m", "pip_audit", "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "probes": {
            url: _probe(url)
            for url in (
                "https://pypi.org/pypi/fastapi/0.165.0/json",  # what pip-audit's default service asks
                "https://pypi.org/pypi/fastapi/json",
                "https://api.osv.dev/v1/query",
            )
        },
        "runs": [_pip_audit("pypi"), _pip_audit("osv")],
        "spot_check": _spot_check(
            {line.split("==")[0].lower(): line.split("==")[1] for line in frozen if "==" in line}
        ),
        "audited_set": frozen,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "audited_set"}, indent=2))


if __name__ == "__main__":
    main()
