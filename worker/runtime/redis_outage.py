"""What a worker does differently so that a Redis outage is never mistaken for its death.

While Redis is down no worker can renew its execution leases (worker/runtime/liveness.py), so
when Redis returns every running job looks abandoned. Two of RQ's behaviours would then cost a
job one of its ``SFUMATO_JOB_ATTEMPTS``: its maintenance sweeps the started registry at once
when a worker (re)starts, before live workers have renewed their leases; and a worker that
cannot complete a finished job gives it up to be run again. Here the first is left to the
liveness sweep, which waits out a grace period after an outage (core/reaper.py), and the
second waits for Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from rq.registry import DeferredJobRegistry, FailedJobRegistry, FinishedJobRegistry, ReadyJobRegistry
from rq.worker import BaseWorker
from rq.worker_registration import clean_worker_registry

log = logging.getLogger("sfumato.worker")

#: What a lost connection to Redis looks like (BusyLoadingError, while Redis replays its AOF,
#: is a ConnectionError).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def clean_registries_except_started(worker: BaseWorker) -> None:
    """RQ's registry maintenance (``BaseWorker.clean_registries``) without its sweep of the started
    registry, which the liveness thread (worker/runtime/liveness.py) does, with a grace period
    after a Redis outage."""
    for queue in worker.queues:
        if not queue.acquire_maintenance_lock():
            continue
        options: dict[str, Any] = {"connection": queue.connection, "serializer": queue.serializer}
        for registry in (FinishedJobRegistry, FailedJobRegistry, DeferredJobRegistry, ReadyJobRegistry):
            registry(name=queue.name, job_class=queue.job_class, **options).cleanup()
        clean_worker_registry(queue)
        queue.release_maintenance_lock()


def complete_through_outage(complete: Callable[[], None], budget_s: float, job_id: str) -> None:
    """Run ``complete`` (a job's completion: Redis writes), retrying while Redis is unreachable.

    A job whose images are stored is done; only writing that down needs Redis. Giving up at the
    first connection error would leave the job to the reaper, which would run it again and spend
    one of its attempts on an outage. The liveness thread keeps renewing the job's lease meanwhile
    (as soon as Redis answers). After ``budget_s`` the error is raised, and the reaper re-runs it.
    """
    deadline = time.monotonic() + budget_s
    delay = 0.25
    while True:
        try:
            complete()
            return
        except REDIS_DOWN as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("job %s: Redis unreachable while completing (%s); retrying in %.1f s", job_id, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
