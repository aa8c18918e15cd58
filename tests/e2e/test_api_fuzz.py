"""schemathesis against a real API process, from its own OpenAPI schema.

At least 500 generated cases (``FUZZ_CASES=5000 python -m pytest tests/e2e/test_api_fuzz.py``
for more; ``python -m bench.api_fuzz`` writes the committed figures): no 5xx, no response that
breaks the schema, no request accepted without credentials, no internals in any body.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.api_fuzz import fuzz, fuzz_env
from devstack.net import free_port
from tests.support.keys import bearer, env_key
from tests.support.processes import start_api

pytestmark = pytest.mark.timeout(900)


def test_fuzzing_the_schema_finds_no_server_error_and_no_schema_violation(redis_server, tmp_path: Path) -> None:
    cases = int(os.environ.get("FUZZ_CASES", "500"))
    env = fuzz_env(redis_server.url, tmp_path)
    port = free_port()
    api = start_api(env, port, tmp_path / "logs")
    try:
        headers = bearer(env_key(env, scopes=["images:read", "images:write", "admin"]))
        report = fuzz(f"http://127.0.0.1:{port}", headers, cases=cases, seed=int(os.environ.get("FUZZ_SEED", "0")))
    finally:
        api.stop()
    summary = json.dumps(report.failures[:5], indent=2)
    assert report.cases >= cases
    assert report.server_errors == 0, summary
    assert report.schema_violations == 0, summary
    assert report.failing_cases == 0, summary
    log = api.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]  # nothing unhandled, even where the client saw a 4xx
