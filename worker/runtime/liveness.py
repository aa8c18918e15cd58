"""Proof of life for running jobs, and recovery of the jobs of dead workers.

RQ's defaults suit short jobs in forked horses: a SimpleWorker's running job stays in the
started registry for ``job_timeout + 60`` s, and abandoned jobs are only swept during
maintenance, which an idle worker blocked in BLMOVE does not run. A killed worker's jobs would
sit in ``started`` for many minutes. Here, while the worker runs, a daemon thread

* extends every running execution (and the worker key) by ``SFUMATO_EXECUTION_TTL_S`` every
  ``SFUMATO_HEARTBEAT_INTERVAL_S``, so a live batch never looks dead however long it takes;
* every ``SFUMATO_REAPER_INTERVAL_S`` sweeps the started registries of every model's queues
  (core/reaper.py: one sweeper per queue at a time, by a Redis lock): executions whose heartbeats
  stopped are re-queued while they have attempts left (``Retry``), else failed (shown to clients
  as ``worker_lost``); and the intermediate lists are swept of jobs a worker took but never
  started. Not for a grace period after this thread last failed to reach Redis: an outage stops
  every worker's heartbeats, and is not a death.

RQ's own maintenance keeps its other chores but leaves abandoned jobs to that sweep
(``worker/runtime/redis_outage.py``): at a worker's start it would judge leases that live
workers have not yet renewed after an outage.

A dead worker's jobs are therefore back in the queue within about TTL + reaper interval, even
when no worker of their model is left. A job that ends while Redis is down waits for Redis to
complete (``worker/runtime/redis_outage.py``) instead of being given up and re-run.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.utils import now

from core.errors import ErrorDict
from core.reaper import AbandonedJobReaper, model_of
from worker.runtime.metrics import job_ended
from worker.runtime.redis_outage import REDIS_DOWN

if TYPE_CHECKING:
    from worker.runtime.runner import SfumatoWorker

log = logging.getLogger("sfumato.worker")


class Liveness:
    def __init__(self, worker: SfumatoWorker) -> None:
        self.worker = worker
        settings = worker.settings
        self.ttl_s = settings.execution_ttl_s
        self.heartbeat_s = settings.heartbeat_interval_s
        self.reap_every = max(1, round(settings.reaper_interval_s / self.heartbeat_s))
        self.reaper = AbandonedJobReaper(
            worker.connection,
            settings,
            worker.name,
            handlers=[count_abandoned],
            queues=[q.name for q in worker.queues],
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sfumato-liveness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        beats = 0
        while not self._stop.wait(self.heartbeat_s):
            beats += 1
            try:
                self.beat()
                if beats % self.reap_every == 0:
                    self.reap()
            except Exception as exc:  # Redis down: the main loop reconnects; keep beating.
                if isinstance(exc, REDIS_DOWN):
                    self.reaper.redis_failed()
                log.warning("liveness: %s", exc)

    def beat(self) -> None:
        """Extend the worker key and every execution this worker is running."""
        worker = self.worker
        executions = list(worker.executions.values())
        with worker.connection.pipeline() as pipe:
            worker.heartbeat(self.ttl_s + 60, pipeline=pipe)
            for execution in executions:
                execution.heartbeat(StartedJobRegistry(execution.job.origin, worker.connection), self.ttl_s, pipe)
                execution.job.heartbeat(now(), self.ttl_s, pipeline=pipe, xx=True)
            pipe.execute()

    def reap(self) -> None:
        """Re-queue or fail the jobs of dead workers, on every model's queues (core/reaper.py),
        and sweep each queue's intermediate list of jobs taken but never started."""
        worker = self.worker
        self.reaper.sweep(after_each=lambda queue: queue.intermediate_queue.cleanup(worker, queue))


def count_abandoned(job: Job, *exc_info: Any) -> None:
    """Called for each abandoned job before it is re-queued or failed (core/reaper.py). A job
    with no attempts left fails there as ``worker_lost``, outside any worker's completion path,
    so it is counted here (``sfumato_jobs_finished_total``) or it would be counted nowhere."""
    if not exc_info or exc_info[0] is not AbandonedJobError:
        return
    if job.retries_left and job.retries_left > 0:
        return
    error = ErrorDict(code="worker_lost", message="the worker running this job died on its last attempt", param=None)
    job_ended(job, model_of(job), "failed", error)
