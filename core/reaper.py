"""Jobs whose worker died: put them back on their queue (or fail them), from any process.

A running job is an RQ *execution* in its queue's started registry, leased for
``SFUMATO_EXECUTION_TTL_S`` and renewed by its worker's heartbeats (worker/runtime/liveness.py).
An execution whose lease ran out belongs to a worker that stopped beating: RQ's
``StartedJobRegistry.cleanup`` re-queues the job at the head of its queue while it has attempts
left (``SFUMATO_JOB_ATTEMPTS``), else fails it (``worker_lost``).

Two rules make that safe and complete:

* **Every queue, by anyone.** A sweep covers the queues of every model the deployment serves
  (each priority class), not only the sweeper's own. Any live worker of any model, and every API
  replica, sweeps; so a job orphaned by the only worker of its model goes back to ``queued``
  (``waiting_for: "no_worker"``), onto the list the autoscaler counts, even while no worker of
  that model exists. A Redis lock per queue keeps it to one sweeper at a time.
* **A Redis outage is not a death.** While Redis is unreachable no worker can renew its leases,
  so when it returns every running job looks abandoned. A sweeper therefore judges nothing for
  one grace period (one lease plus one heartbeat) after it last failed to reach Redis, and after
  it starts (it cannot know what happened before): time enough for every live worker to renew
  its leases. Only a worker that is really gone (it still has not renewed after that) costs its
  jobs an attempt.

So a dead worker's jobs are back in their queue within ``SFUMATO_EXECUTION_TTL_S`` +
``SFUMATO_REAPER_INTERVAL_S`` of its last heartbeat (plus the grace period when the death
coincides with an outage or a sweeper's start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from rq import Queue
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from core.config import Settings
from core.metrics import record_finished
from core.models import served_models
from core.priority import WAKE_CAP, priority_of_queue, queue_names, wake_key

log = logging.getLogger("sfumato.reaper")

#: ``handler(job, exc_type, exc_value, traceback)``, RQ's exception-handler shape: called for each
#: abandoned job before it is re-queued or failed.
AbandonedHandler = Callable[..., Any]


def served_queue_names(settings: Settings) -> list[str]:
    """Every queue a job of this deployment can sit in: each served model, each priority class."""
    return [name for model_id in served_models(settings) for name in queue_names(settings, model_id).values()]


def model_of(job: Job) -> str:
    """The model a job asked for, read without validating the whole payload."""
    try:
        return str(job.args[0]["model"])
    except (IndexError, KeyError, TypeError):
        return "unknown"


def count_lost(job: Job, *exc_info: Any) -> None:
    """Count a job the sweep fails for good (``worker_lost``, no attempts left): it fails outside
    any worker's completion path, so it would be counted nowhere else."""
    if not exc_info or exc_info[0] is not AbandonedJobError:
        return
    if job.retries_left and job.retries_left > 0:
        return
    record_finished(model_of(job), "failed", "worker_lost", priority_of_queue(job.origin))


class AbandonedJobReaper:
    """Sweeps the started registries of ``queues`` for executions whose lease ran out.

    ``owner`` names the sweeper in its lock. Call :meth:`redis_failed` whenever this process
    fails to reach Redis; :meth:`sweep` then waits out the grace period before judging again.
    """

    def __init__(
        self,
        connection: redis.Redis,
        settings: Settings,
        owner: str,
        *,
        handlers: Iterable[AbandonedHandler] = (count_lost,),
        queues: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.owner = owner
        self.handlers = list(handlers)
        self.extra_queues = list(queues)
        self.clock = clock
        #: One lease plus one heartbeat: every live worker renews its leases within that time
        #: after Redis answers again (it beats every heartbeat interval).
        self.grace_s = settings.execution_ttl_s + settings.heartbeat_interval_s
        self._judge_after = clock() + self.grace_s  # after a start, as after an outage

    def redis_failed(self) -> None:
        """This process could not reach Redis: judge no lease until a grace period after now."""
        self._judge_after = max(self._judge_after, self.clock() + self.grace_s)

    def in_grace(self) -> bool:
        return self.clock() < self._judge_after

    def queues(self) -> list[Queue]:
        names = list(self.extra_queues)
        try:
            names += [n for n in served_queue_names(self.settings) if n not in names]
        except Exception as exc:  # a broken registry must not stop the sweep of our own queues
            log.warning("reaper: served models unreadable (%s); sweeping %s only", exc, names)
        return [Queue(name, connection=self.connection, serializer=JSONSerializer) for name in names]

    def sweep(self, after_each: Callable[[Queue], None] | None = None) -> None:
        """Re-queue or fail the jobs of dead workers on every queue this sweeper may take.

        ``after_each(queue)`` runs after a queue's sweep, under its lock (a worker also sweeps
        the queue's intermediate list there). Raises Redis errors (the caller reports them and
        calls :meth:`redis_failed`).
        """
        if self.in_grace():
            return
        lock_ttl = max(1, int(self.settings.reaper_interval_s))
        for queue in self.queues():
            lock = f"{self.settings.queue_prefix}:reaper:{queue.name}"
            if not self.connection.set(lock, self.owner, nx=True, ex=lock_ttl):
                continue
            seen: dict[str, bool] = {}  # job id -> re-queued (it had an attempt left)

            def note(job: Job, *exc_info: Any, seen: dict[str, bool] = seen) -> None:
                seen[job.id] = bool(job.retries_left and job.retries_left > 0)

            queue.started_job_registry.cleanup(exception_handlers=[*self.handlers, note])
            if any(seen.values()):
                self._wake(queue)
            for job_id, requeued in seen.items():
                log.warning(
                    "job %s: its worker stopped renewing its lease; %s",
                    job_id,
                    "re-queued" if requeued else "failed (worker_lost: no attempts left)",
                    extra={"event": "job_abandoned", "job_id": job_id, "queue": queue.name, "requeued": requeued},
                )
            if after_each is not None:
                after_each(queue)

    def _wake(self, queue: Queue) -> None:
        """Ring the queue's bell, as an enqueue does, so an idle worker of the model starts now."""
        wake = wake_key(queue.key)
        with self.connection.pipeline() as pipe:
            pipe.rpush(wake, "1")
            pipe.ltrim(wake, -WAKE_CAP, -1)
            pipe.expire(wake, 600)
            pipe.execute()
