"""The worker loop on RQ: take a job, run it on the resident engine, complete it on its own.

Built on RQ's ``SimpleWorker`` (never forks: CUDA contexts and resident weights do not
survive a fork) by overriding the one hook RQ offers for it, ``execute_job``. RQ keeps doing
what it does well: blocking dequeue, worker registration and heartbeats, registries, maintenance.
We replace only "call the job's function": payloads go to :func:`worker.execute.run_jobs`, and
each job is finished with RQ's own success/failure handling, with our error code in its meta.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.utils import now as rq_now
from rq.worker import WorkerStatus

from core.config import Settings
from core.errors import ErrorDict, GenerationFailed
from core.jobs import META_ERROR, payload_of
from core.presence import announce, withdraw
from core.storage import ObjectStore
from worker.engine import Engine
from worker.execute import JobOutcome, run_jobs

log = logging.getLogger("sfumato.worker")


class JobFailed(Exception):
    """Carries a job's error into RQ's failure path (its message is what RQ logs)."""

    def __init__(self, error: ErrorDict) -> None:
        super().__init__(f"{error['code']}: {error['message']}")
        self.error = error


class SfumatoWorker(SimpleWorker):
    """An RQ worker whose jobs run on one resident :class:`Engine`."""

    def __init__(
        self, queues: list[Queue], *, engine: Engine, store: ObjectStore, settings: Settings, **kwargs: Any
    ) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(queues, **kwargs)
        self.engine = engine
        self.store = store
        self.settings = settings

    # --- the RQ hook ---------------------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        try:
            self._perform(job, queue, execution)
        finally:
            self.set_state(WorkerStatus.IDLE)

    def _perform(self, job: Job, queue: Queue, execution: Execution) -> None:
        if job.get_status(refresh=True) == RQStatus.CANCELED:
            # Canceled between dequeue and start: it must never run.
            with self.connection.pipeline() as pipe:
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.execute()
            log.info("job %s was canceled before it started", job.id)
            return
        self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
        job.started_at = rq_now()
        try:
            payload = payload_of(job)
        except Exception as exc:
            self._fail(job, queue, execution, GenerationFailed(f"invalid job payload: {exc}"[:500]).to_dict())
            return
        timeout = job.timeout or self.settings.job_timeout_s
        try:
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                (outcome,) = run_jobs(self.engine, self.store, [payload], started_at=time.time())
        except JobTimeoutException:
            error = ErrorDict(code="timeout", message=f"the job ran longer than {timeout} s", param=None)
            outcome = JobOutcome(payload=payload, error=error)
        self._complete(job, queue, execution, outcome)

    # --- completion ----------------------------------------------------------------------
    def _complete(self, job: Job, queue: Queue, execution: Execution, outcome: JobOutcome) -> None:
        if outcome.result is not None:
            self._finalize_success(job, queue, execution, outcome.result.model_dump(mode="json"))
        else:
            assert outcome.error is not None
            self._fail(job, queue, execution, outcome.error)

    def _fail(self, job: Job, queue: Queue, execution: Execution, error: ErrorDict) -> None:
        job.meta[META_ERROR] = dict(error)
        job.save_meta()
        try:
            raise JobFailed(error)
        except JobFailed:
            self._finalize_failure(job, queue, execution, sys.exc_info())


class PresenceHeartbeat:
    """Announces this worker's model in Redis every few seconds from a daemon thread."""

    def __init__(self, worker: SfumatoWorker, interval_s: float = 5.0) -> None:
        self.worker = worker
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sfumato-presence", daemon=True)

    def _beat(self) -> None:
        w = self.worker
        announce(w.connection, w.settings, w.engine.spec.id, w.name, ttl_s=self.interval_s * 3)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
            except Exception as exc:  # Redis down: keep trying, the worker loop reconnects too.
                log.warning("presence heartbeat failed: %s", exc)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            withdraw(self.worker.connection, self.worker.settings, self.worker.engine.spec.id, self.worker.name)
        except Exception as exc:
            log.warning("could not withdraw presence: %s", exc)
