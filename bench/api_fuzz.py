"""Fuzz the API from its own OpenAPI schema with schemathesis, and count what happened.

Every operation gets schema-valid (positive) and schema-breaking (negative) cases, sent over
real HTTP with an API key holding every scope. A case fails if the server answers 5xx, with a
status code, content type, header or body the schema does not declare, accepts a request
without credentials although the schema says it needs them, or leaks internals (a traceback,
a file path, the Redis URL) in its body.

    python -m bench.api_fuzz [--cases 5000] [--seed 1]   # writes bench/results/schemathesis.json

The test suite runs the same fuzzer with 500 cases (``FUZZ_CASES`` for more):
tests/e2e/test_api_fuzz.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

RESULTS = Path(__file__).resolve().parent / "results" / "schemathesis.json"
LEAKS = ("Traceback", 'File "', "redis://", "/site-packages/", "/work/", "/home/", "/tmp/")


@schemathesis.check
def no_internals_in_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """No traceback, source path or infrastructure address in any response body."""
    text = response.content.decode("utf-8", "replace") if response.content else ""
    found = [leak for leak in LEAKS if leak in text]
    if found:
        raise AssertionError(f"response body reveals internals: {found}")
    return None


#: Endpoints that hold a valid request until a worker has made the images (api/synchronous.py).
SYNCHRONOUS_OPERATIONS = frozenset(
    {
        "POST /v1/images/generations",
        "POST /v1/images/edits",
        "POST /v1/images/variations",
        "POST /sdapi/v1/txt2img",
        "POST /sdapi/v1/img2img",
    }
)


@schemathesis.check
def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' ``not_a_server_error``, except the one 5xx that is an answer, not a crash:
    the declared ``504 {"error": {"code": "timeout"}}`` of a synchronous endpoint (OpenAI's,
    A1111's) when no image arrives in time (the fuzz target runs no worker)."""
    if response.status_code == 504 and case.operation.label in SYNCHRONOUS_OPERATIONS:
        body = response.json() if response.content else {}
        if isinstance(body, dict) and body.get("error", {}).get("code") == "timeout":
            return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
    no_internals_in_body,
]


@dataclass
class FuzzReport:
    schemathesis_version: str
    seed: int
    cases: int = 0
    server_errors: int = 0
    schema_violations: int = 0
    failing_cases: int = 0
    duration_s: float = 0.0
    checks: list[str] = field(default_factory=list)
    by_operation: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _record_failures(report: FuzzReport, label: str, mode: str, group: FailureGroup, curl: str) -> None:
    report.failing_cases += 1
    for failure in group.exceptions:
        name = getattr(failure, "title", type(failure).__name__)
        check = str(getattr(failure, "check_name", "") or name)
        if check in ("not_a_server_error", "no_server_error"):
            report.server_errors += 1
        elif check != "no_internals_in_body":
            report.schema_violations += 1
        if len(report.failures) < 50:  # enough to debug, bounded output
            report.failures.append(
                {"operation": label, "mode": mode, "check": check, "message": str(failure)[:500], "curl": curl[:2000]}
            )


def fuzz(base_url: str, headers: dict[str, str], *, cases: int, seed: int = 0) -> FuzzReport:
    """Run at least ``cases`` generated requests against ``base_url``; returns the counts."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    # The synchronous endpoints hold a valid request until a worker has made the images; the
    # fuzz target runs no worker, so fuzz_env makes them give up (504, declared) after 0.1 s.
    operations = [result.ok() for result in schema.get_all_operations()]
    report = FuzzReport(schemathesis.__version__, seed, checks=[c.__name__ for c in CHECKS])
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    started = time.monotonic()
    per_target = max(1, cases // (2 * len(operations)))
    rounds = 0
    while report.cases < cases and rounds < 20:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz_one(operation, mode, base_url, headers, per_target, seed + rounds, report, stats)
        rounds += 1
    report.duration_s = round(time.monotonic() - started, 2)
    report.by_operation = {label: dict(sorted(counts.items())) for label, counts in sorted(stats.items())}
    return report


def _fuzz_one(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    headers: dict[str, str],
    examples: int,
    seed: int,
    report: FuzzReport,
    stats: dict[str, Counter[str]],
) -> None:
    label = operation.label

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every failure is recorded as is
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        report.cases += 1
        stats[label]["cases"] += 1
        try:
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            stats[label][str(response.status_code)] += 1
            case.validate_response(response, checks=CHECKS, headers=headers, transport_kwargs={"base_url": base_url})
        except FailureGroup as group:
            _record_failures(report, label, mode.value, group, case.as_curl_command(headers=headers))

    # Unsatisfiable: nothing to break (no parameters, no body), so no negative case exists.
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()


# --- the committed figures: a private Redis and a real API process ---------------------------


@contextmanager
def fuzz_target(workdir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A private Redis and an API process configured for fuzzing; yields (base URL, headers)."""
    from devstack.net import free_port
    from devstack.redis_server import start_redis
    from tests.support.keys import bearer, env_key
    from tests.support.processes import start_api

    redis = start_redis(workdir / "redis")
    env = fuzz_env(redis.url, workdir)
    port = free_port()
    api = start_api(env, port, workdir / "logs")
    try:
        yield f"http://127.0.0.1:{port}", bearer(env_key(env, scopes=["images:read", "images:write", "admin"]))
    finally:
        api.stop()
        redis.stop()


def fuzz_env(redis_url: str, workdir: Path) -> dict[str, str]:
    """Limits off and ``wait`` short: the fuzzer should explore validation, not sit in 429s."""
    return {
        "SFUMATO_REDIS_URL": redis_url,
        "SFUMATO_DATA_DIR": str(workdir / "data"),
        "SFUMATO_QUEUE_PREFIX": f"fuzz-{secrets.token_hex(4)}",
        "SFUMATO_URL_SIGNING_KEY": "fuzz",
        "SFUMATO_RATE_LIMIT_RPS": "0",
        "SFUMATO_IMAGES_PER_MINUTE": "0",
        "SFUMATO_MAX_CONCURRENT_JOBS": "0",
        "SFUMATO_MAX_QUEUE_DEPTH": "0",
        "SFUMATO_MAX_WAIT_S": "0.05",
        "SFUMATO_EVENTS_MAX_S": "0.5",  # an event stream on a job no worker takes ends quickly
        "SFUMATO_OPENAI_TIMEOUT_S": "0.1",  # likewise POST /v1/images/generations: 504 at once
        "SFUMATO_LOG_LEVEL": "WARNING",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fuzz_target(Path(tmp)) as (base_url, headers):
        report = fuzz(base_url, headers, cases=args.cases, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.as_json().items() if k not in ("failures", "by_operation")}, indent=2))


if __name__ == "__main__":
    main()
