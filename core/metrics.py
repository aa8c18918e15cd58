"""Prometheus metrics shared by the API and the workers: names, label rules, exposition.

Every metric is named ``sfumato_*`` and has bounded labels only: a route *template*, a status,
a model id, a mode, a scheduler, a state, an error code (from a closed set, else ``other``).
Never a job id, a tenant, a prompt or a raw path.

Who exports what:

- the API: HTTP metrics (``api/metrics.py``), jobs submitted and canceled (recorded in
  ``core/jobs.py``), and the queue seen from Redis at scrape time (``core/queue_metrics.py``);
- each worker: jobs succeeded/failed and everything about generation (``worker/runtime/metrics.py``),
  served on its own port (``worker/runtime/health_server.py``).

``sfumato_jobs_finished_total`` is exported by both sides (canceled by the API, succeeded and
failed by the workers); sum it across targets.

Several API processes (``SFUMATO_API_WORKERS`` > 1) share one view through prometheus_client's
multiprocess mode: each process writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR``
and any process answering ``/metrics`` merges them (:func:`render`). The variable must be set
before ``prometheus_client`` is imported, which ``api/serving.py`` arranges for its children.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from functools import lru_cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from core.errors import ServiceError
from core.priority import DEFAULT_PRIORITY, PriorityClass
from core.schemas import JobPayload

log = logging.getLogger("sfumato.jobs")

NAMESPACE = "sfumato"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The value of the ``code`` label when a job did not fail.
NO_ERROR = "none"
#: Error codes that are not a ServiceError class attribute but are set by the runner.
_EXTRA_CODES = frozenset({"timeout", "canceled", "worker_lost", "deadline_exceeded", "internal_error"})
#: Label names that would make a series per request: a test checks no metric uses them.
FORBIDDEN_LABELS = frozenset({"job_id", "request_id", "tenant", "prompt", "path", "key", "id", "seed"})

#: Seconds, from a fast GET to a ``?wait=60`` POST.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Seconds a job or a batch takes, from a tiny-model step to a minutes-long queue wait.
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# No ``*_created`` series: they double a scrape and nothing here reads them.
disable_created_metrics()

JOBS_SUBMITTED = Counter(
    "sfumato_jobs_submitted_total",
    "Jobs put on a queue, by model, mode and priority class.",
    ["model", "mode", "priority"],
)
JOBS_FINISHED = Counter(
    "sfumato_jobs_finished_total",
    "Jobs that reached a final state (succeeded, failed, canceled), by error code (none unless failed) "
    "and priority class.",
    ["model", "state", "code", "priority"],
)


@lru_cache(maxsize=1)
def known_error_codes() -> frozenset[str]:
    """Every ``code`` of the ServiceError hierarchy, plus the runner's own ones."""
    codes, pending = set(_EXTRA_CODES), [ServiceError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return frozenset(codes)


def bounded_code(code: str | None) -> str:
    """``code`` as a label value: a known error code, ``none`` for no error, else ``other``."""
    if not code:
        return NO_ERROR
    return code if code in known_error_codes() else "other"


def record_submitted(payload: JobPayload) -> None:
    """Count a job put on its queue, and log it (with the request id of the context)."""
    JOBS_SUBMITTED.labels(payload.model, payload.mode, payload.priority).inc()
    fields = {"event": "job_submitted", "job_id": payload.job_id, "model": payload.model, "mode": payload.mode}
    fields["priority"] = payload.priority
    log.info("job %s submitted (%s, n=%d)", payload.job_id, payload.mode, payload.n, extra=fields)


def record_finished(
    model: str, state: str, code: str | None = None, priority: PriorityClass = DEFAULT_PRIORITY
) -> None:
    """Count a job that reached ``state``; ``code`` only for failures."""
    JOBS_FINISHED.labels(model, state, bounded_code(code) if state == "failed" else NO_ERROR, priority).inc()


def multiprocess_dir() -> str | None:
    """The multiprocess directory in force in this process, if any."""
    return os.environ.get(MULTIPROC_ENV) or None


def render(extra: Iterable[Collector] = ()) -> bytes:
    """The text exposition of this process's metrics (merged across processes in multiprocess
    mode) followed by the ``extra`` collectors, which are computed now (scrape time)."""
    if multiprocess_dir():
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        body = generate_latest(merged)
    else:
        body = generate_latest(REGISTRY)
    scrape_time = CollectorRegistry(auto_describe=False)
    for collector in extra:
        scrape_time.register(collector)
    return body + generate_latest(scrape_time)
