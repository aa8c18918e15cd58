"""Proof of life for running jobs, and recovery of the jobs of dead workers.

RQ's defaults suit short jobs in forked horses: a SimpleWorker's running job stays in the
started registry for ``job_timeout + 60`` s, and abandoned jobs are only swept during
maintenance, which an idle worker blocked in BLMOVE does not run. A killed worker's jobs would
sit in ``started`` for many minutes. Here, while jobs run, a daemon thread

* extends every running execution (and the worker key) by ``SFUMATO_EXECUTION_TTL_S`` every
  ``SFUMATO_HEARTBEAT_INTERVAL_S``, so a live batch never looks dead however long it takes;
* every ``SFUMATO_REAPER_INTERVAL_S`` (one worker at a time, by a Redis lock), runs RQ's own
  ``StartedJobRegistry.cleanup``: executions whose heartbeats stopped are re-queued while they
  have attempts left (``Retry``), else failed (shown to clients as ``worker_lost``), and the
  intermediate queue is swept of jobs a worker took but never started.

A dead worker's jobs are therefore back in the queue within about TTL + reaper interval.
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
from worker.runtime.metrics import job_ended

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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sfumato-liveness", daemon=True)
        # RQ's own maintenance sweeps abandoned jobs too, with the worker's exception handlers.
        worker.push_exc_handler(count_abandoned)

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
        """Re-queue or fail jobs whose workers stopped beating; one worker per queue at a time."""
        worker = self.worker
        for queue in worker.queues:
            lock = f"{worker.settings.queue_prefix}:reaper:{queue.name}"
            if not worker.connection.set(lock, worker.name, nx=True, ex=max(1, int(worker.settings.reaper_interval_s))):
                continue
            queue.started_job_registry.cleanup(exception_handlers=[count_abandoned])
            queue.intermediate_queue.cleanup(worker, queue)


def count_abandoned(job: Job, *exc_info: Any) -> None:
    """RQ calls this for each abandoned job before re-queuing or failing it (from our reaper and
    from its own maintenance; as a worker exception handler it also sees ordinary failures, which
    the runner counts itself). A job with no attempts left fails there as ``worker_lost``,
    outside any worker's completion path, so it is counted here (``sfumato_jobs_finished_total``)
    or it would be counted nowhere."""
    if not exc_info or exc_info[0] is not AbandonedJobError:
        return
    if job.retries_left and job.retries_left > 0:
        return
    try:
        model = str(job.args[0]["model"])
    except (IndexError, KeyError, TypeError):
        model = "unknown"
    error = ErrorDict(code="worker_lost", message="the worker running this job died on its last attempt", param=None)
    job_ended(job, model, "failed", error)
