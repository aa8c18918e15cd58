"""Audit the locked dependencies and record exactly what happened.

    python -m bench.pip_audit        # writes bench/results/pip-audit.json

The audited set is ``requirements/lock.txt``: the exact versions ``make install``, CI and the
Docker images install. Two sources, both recorded:

1. pip-audit against the lock, with both of its services (PyPI's per-version JSON and OSV).
   Where a service cannot be reached, or answers nothing for a package, the result says so
   instead of reporting a clean audit that did not happen.
2. PyPI's project JSON (``/pypi/<name>/json``), whose ``vulnerabilities`` list is PyPI's
   advisory data for the NEWEST release. A locked package at its newest release is checked
   by it in full; any other package is a finding, explained by why the lock holds an older
   release (a project pin, Python 3.11, or another package's upper bound).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "pip-audit.json"
LOCK = Path(__file__).resolve().parent.parent / "requirements" / "lock.txt"
PYTHON = "3.11"


def _pip_audit(service: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        proc = subprocess.run(
            [sys.executable, "-m", "pip_audit", "--vulnerability-service", service, "--format", "json",
             "--progress-spinner", "off", "--requirement", str(LOCK), "--no-deps", "--disable-pip",
             "--output", str(out)],
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


def _lock_pins() -> dict[str, str]:
    """name -> version of every pin in requirements/lock.txt (the audited set)."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def _why_not_latest(name: str, latest: str, latest_requires_python: str | None) -> str:
    """Why the lock holds an older release than PyPI's newest: a project pin, Python 3.11, or
    another locked package's upper bound (read from the installed metadata)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    if latest_requires_python and not SpecifierSet(latest_requires_python).contains(PYTHON):
        return f"{latest} requires Python {latest_requires_python}; the lock is for Python {PYTHON}"
    wanted = canonicalize_name(name)
    for dist in metadata.distributions():
        for raw in dist.requires or []:
            req = Requirement(raw)
            if canonicalize_name(req.name) == wanted and req.specifier and not req.specifier.contains(latest):
                who = dist.metadata["Name"]
                role = "pinned by this project" if who.lower() == "sfumato" else f"capped by {who}"
                return f"{role}: {req.name}{req.specifier}"
    return "an older release is locked: run `make lock` to move to the newest"


def _advisory_check(pins: dict[str, str]) -> list[dict[str, Any]]:
    """Each locked package against the project JSON's ``vulnerabilities`` (PyPI's advisory data,
    which covers the NEWEST release only). A package at its newest release is fully checked; an
    older one is a finding with the reason it is older."""

    def check(item: tuple[str, str]) -> dict[str, Any]:
        name, version = item
        row: dict[str, Any] = {"package": name, "locked": version}
        try:
            with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as resp:
                data = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return {**row, "status": "unreachable", "detail": str(exc)[:200]}
        latest = data["info"]["version"]
        vulns = [v["id"] for v in data.get("vulnerabilities", []) if not v.get("withdrawn")]
        if version.split("+")[0] == latest:
            return {**row, "status": "vulnerable" if vulns else "clean", "vulnerabilities": vulns}
        why = _why_not_latest(name, latest, data["info"].get("requires_python"))
        return {**row, "status": "older than newest", "newest": latest, "why": why,
                "newest_release_vulnerabilities": vulns}  # fmt: skip

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(check, sorted(pins.items())))


def main() -> None:
    pins = _lock_pins()
    advisories = _advisory_check(pins)
    counts = Counter(row["status"] for row in advisories)
    report = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "audited": "requirements/lock.txt",
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
        "advisory_summary": dict(counts),
        "findings": [row for row in advisories if row["status"] != "clean"],
        "advisories": advisories,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("advisories",)}, indent=2))


if __name__ == "__main__":
    main()
