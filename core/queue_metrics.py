"""The queue as Prometheus sees it, read from Redis at scrape time.

Queue depth and the age of the oldest queued job are facts about Redis, not about one process,
so they are not counters kept in memory: a custom collector asks Redis when ``/metrics`` is
scraped (a handful of O(1) commands per model queue, one round trip for the counts), and every
API replica reports the same numbers. Each model has one queue per priority class
(core/priority.py), so the queue series carry ``queue`` and ``priority`` labels (three classes:
bounded). Dashboards and alerts take ``max`` over replicas, then ``sum by (model)`` over classes.

A Redis outage does not fail the scrape: ``sfumato_redis_up`` drops to 0 and the queue series
are left out for that scrape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.utils import utcparse

from core.config import Settings
from core.models import served_models
from core.presence import live_workers
from core.priority import PRIORITIES, PriorityClass, queue_name

log = logging.getLogger("sfumato.metrics")

#: Queue entries looked at for the oldest job (its hash may have expired under it).
_HEAD = 5


class QueueCollector:
    """Collects ``sfumato_queue_*``, ``sfumato_jobs_running``, ``sfumato_workers_live`` and
    ``sfumato_redis_up`` for every served model."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "sfumato_queue_depth", "Jobs waiting in the queue.", labels=["model", "queue", "priority"]
        )
        age = GaugeMetricFamily(
            "sfumato_queue_oldest_job_age_seconds",
            "Seconds the oldest queued job has waited (0 when the queue is empty).",
            labels=["model", "queue", "priority"],
        )
        running = GaugeMetricFamily(
            "sfumato_jobs_running",
            "Jobs a worker has started and not yet completed.",
            labels=["model", "queue", "priority"],
        )
        workers = GaugeMetricFamily(
            "sfumato_workers_live",
            "Workers that announced the model recently (loaded and warmed up).",
            labels=["model"],
        )
        up = 1.0
        try:
            for model_id in served_models(self.settings):
                for priority in PRIORITIES:
                    name = queue_name(self.settings, model_id, priority)
                    n_queued, n_running, oldest = self._read(name)
                    labels = [model_id, name, priority]
                    depth.add_metric(labels, n_queued)
                    running.add_metric(labels, n_running)
                    age.add_metric(labels, max(0.0, time.time() - oldest) if oldest else 0.0)
                workers.add_metric([model_id], live_workers(self.connection, self.settings, model_id))
        except redis.exceptions.RedisError as exc:
            log.warning("queue metrics unavailable: %s", type(exc).__name__)
            up = 0.0
        redis_up = GaugeMetricFamily("sfumato_redis_up", "1 if the last scrape could read the queue from Redis.")
        redis_up.add_metric([], up)
        yield redis_up
        if up:
            yield from (depth, age, running, workers)

    def _read(self, queue: str) -> tuple[int, int, float | None]:
        """(queued, running, enqueue time of the oldest queued job or None)."""
        queue_key = Queue.redis_queue_namespace_prefix + queue
        started_key = StartedJobRegistry(queue, connection=self.connection).key
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.llen(queue_key)
            pipe.zcard(started_key)
            pipe.lrange(queue_key, 0, _HEAD - 1)
            n_queued, n_running, head = pipe.execute()
        oldest = None
        if head:
            with self.connection.pipeline(transaction=False) as pipe:
                for job_id in head:
                    pipe.hget(Job.redis_job_namespace_prefix + job_id.decode(), "enqueued_at")
                stamps = pipe.execute()
            for stamp in stamps:
                if stamp:
                    oldest = utcparse(stamp.decode()).timestamp()
                    break
        return int(n_queued), int(n_running), oldest


def queue_depths(connection: redis.Redis, settings: Settings, model_id: str) -> dict[PriorityClass, int]:
    """Queued jobs of one model per priority class, highest class first (one round trip)."""
    with connection.pipeline(transaction=False) as pipe:
        for priority in PRIORITIES:
            pipe.llen(Queue.redis_queue_namespace_prefix + queue_name(settings, model_id, priority))
        lengths = pipe.execute()
    return {priority: int(n) for priority, n in zip(PRIORITIES, lengths, strict=True)}
