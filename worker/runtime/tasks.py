"""The function recorded on every queued job (``core.jobs.GENERATE_FUNC``): one job, run for real.

``sfumato-worker`` never calls it: it takes jobs itself, batches compatible ones and runs them on
its resident engine (``worker/runtime/runner.py``). But the name on the queue is a promise about
what the job does, so it names code that does it: a plain RQ worker that never forks
(``rq worker -w rq.worker.SimpleWorker --serializer rq.serializers.JSONSerializer <queue>``, with
the same ``SFUMATO_*`` environment) runs each job alone through the same execution and upload
stages, on an engine loaded once per process and kept resident. It gives up what the batching
worker adds (partners, progress, cancellation while running, retries after a worker death),
never the result: the same images under the same keys.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

from rq import get_current_job

from core.config import get_settings
from core.errors import ErrorDict
from core.jobs import META_ERROR
from core.schemas import JobPayload
from core.storage import ObjectStore, build_store
from worker.pipelines.engine import Engine
from worker.runtime.execute import generate_batch, store_outputs

log = logging.getLogger("sfumato.worker")


class JobFailed(RuntimeError):
    """A job that ran and failed: RQ records it as failed, with our error code in the message."""

    def __init__(self, error: ErrorDict) -> None:
        super().__init__(f"{error['code']}: {error['message']}")
        self.error = error


@lru_cache(maxsize=1)
def resident() -> tuple[Engine, ObjectStore]:
    """The process's engine (loaded and warmed up once, then kept) and its image store."""
    settings = get_settings()
    log.info("loading model %s for plain-RQ execution", settings.model)
    engine = Engine.load(settings)
    engine.warmup()
    return engine, build_store(settings)


def run_one(engine: Engine, store: ObjectStore, payload: JobPayload, retry_budget_s: float) -> dict[str, Any]:
    """Generate and store one job's images; its result as stored in RQ (JSON), or
    :class:`JobFailed` with the job's error."""
    started_at = time.time()
    (generated,) = generate_batch(engine, [payload])
    outcome = store_outputs(store, generated, engine.spec.id, started_at, retry_budget_s=retry_budget_s)
    if outcome.result is None:
        assert outcome.error is not None
        raise JobFailed(outcome.error)
    return outcome.result.model_dump(mode="json")


def generate(payload: dict[str, Any]) -> dict[str, Any]:
    """Run the job ``payload`` (its queue JSON) on this process's resident engine.

    A failure is recorded as the batching worker records it (our error in the job's meta, so
    ``GET /v1/images/{id}`` shows its code) and is final: RQ's retries are for dead workers."""
    engine, store = resident()
    try:
        return run_one(engine, store, JobPayload.model_validate(payload), get_settings().storage_retry_budget_s)
    except JobFailed as failed:
        job = get_current_job()
        if job is not None:
            job.retries_left = 0
            job.meta[META_ERROR] = dict(failed.error)
            job.save_meta()
        raise
