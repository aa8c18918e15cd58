"""Metric labels stay bounded: no per-request label, error codes from a closed set."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

import api.metrics
import core.metrics
from core.metrics import FORBIDDEN_LABELS, NO_ERROR, bounded_code, known_error_codes
from worker.runtime.metrics import Instruments

ROOT = Path(__file__).resolve().parents[2]


def test_error_codes_are_bounded() -> None:
    assert bounded_code(None) == NO_ERROR and bounded_code("") == NO_ERROR
    assert bounded_code("generation_failed") == "generation_failed"
    assert bounded_code("out_of_memory") == "out_of_memory"  # a subclass's code
    assert bounded_code("timeout") == "timeout"
    assert bounded_code("something a user typed") == "other"


def test_every_job_error_code_in_the_code_base_is_known() -> None:
    # A job's error code becomes a label value: one that is not known would be counted as
    # "other". Add new codes to core.metrics._EXTRA_CODES (or make them a ServiceError class).
    sources = [*(ROOT / "worker").rglob("*.py"), ROOT / "core" / "jobs.py"]
    literals = set()
    for path in sources:
        text = path.read_text()
        literals |= set(re.findall(r'code="([a-z_]+)"', text)) | set(re.findall(r'"code": "([a-z_]+)"', text))
    assert literals, "no error codes found: has the pattern changed?"
    assert literals <= known_error_codes(), sorted(literals - known_error_codes())


def test_no_metric_has_a_per_request_label() -> None:
    metrics = [
        *(v for m in (core.metrics, api.metrics) for v in vars(m).values() if hasattr(v, "_labelnames")),
        *(v for v in vars(Instruments(CollectorRegistry())).values() if hasattr(v, "_labelnames")),
    ]
    assert len(metrics) > 10
    for metric in metrics:
        assert metric._name.startswith("sfumato_"), metric._name
        assert not set(metric._labelnames) & FORBIDDEN_LABELS, (metric._name, metric._labelnames)
