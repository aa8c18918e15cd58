"""The abandoned-job sweep (core/reaper.py) on a real Redis, without worker processes.

A job is started the way a worker starts it (an RQ execution in the started registry), then its
lease is made to run out. The sweep must re-queue it whatever model it belongs to, and must
judge nothing during the grace period that follows its own start or a Redis failure.
"""

from __future__ import annotations

import time

import pytest
import redis
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer

from core.config import Settings
from core.jobs import JobStore
from core.reaper import AbandonedJobReaper
from tests.support.embedding import registry_toml
from tests.support.engine import payload as make_payload


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(make_settings, tmp_path) -> Settings:
    models: list[dict[str, object]] = [
        {"id": m, "source": "tiny", "family": "tiny", "default_steps": 4} for m in ("alpha", "beta")
    ]
    (tmp_path / "models.toml").write_text(registry_toml(models))
    return make_settings(models_file=tmp_path / "models.toml", job_attempts=3, queue_prefix=f"reap{time.time_ns()}")


def _orphan(connection: redis.Redis, settings: Settings, model: str) -> Job:
    """A job of ``model`` started by a worker that then vanished: its lease ran out 10 s ago."""
    payload = make_payload(job_id=f"j{time.time_ns()}", model=model)
    store = JobStore(connection, settings)
    store.enqueue(payload)
    queue = store.queue(model)
    job = queue.fetch_job(payload.job_id)
    assert job is not None
    connection.lrem(queue.key, 0, job.id)  # taken off the queue ...
    with connection.pipeline() as pipe:  # ... and started, as SfumatoWorker._start_many does
        execution = Execution.create(job, 60, pipeline=pipe, worker_name="gone")
        job.prepare_for_execution("gone", pipeline=pipe)
        pipe.execute()
    member = f"{job.id}:{execution.id}"
    connection.zadd(queue.started_job_registry.key, {member: time.time() - 10})
    return job


def _state(connection: redis.Redis, job: Job) -> tuple[str, int | None, bool]:
    fresh = Job.fetch(job.id, connection=connection, serializer=JSONSerializer)
    queued = job.id.encode() in connection.lrange(f"rq:queue:{job.origin}", 0, -1)
    return fresh.get_status().value, fresh.retries_left, queued


def test_any_sweeper_requeues_another_models_orphan_onto_its_own_queue(clean_redis, settings) -> None:
    job = _orphan(clean_redis, settings, "beta")
    clock = Clock()
    reaper = AbandonedJobReaper(
        clean_redis, settings, "alpha-worker", queues=[f"{settings.queue_prefix}:alpha"], clock=clock
    )
    clock.now += reaper.grace_s  # past the start-up grace
    reaper.sweep()
    assert _state(clean_redis, job) == ("queued", 1, True)  # the death cost one attempt


def test_no_lease_is_judged_during_the_grace_after_start_or_a_redis_failure(clean_redis, settings) -> None:
    job = _orphan(clean_redis, settings, "alpha")
    clock = Clock()
    reaper = AbandonedJobReaper(clean_redis, settings, "api", clock=clock)
    reaper.sweep()  # just started: it cannot know whether Redis was away
    assert _state(clean_redis, job) == ("started", 2, False)
    clock.now += reaper.grace_s - 1
    reaper.redis_failed()  # an outage: every lease looks expired when Redis answers again
    clock.now += reaper.grace_s - 1
    reaper.sweep()
    assert _state(clean_redis, job) == ("started", 2, False)
    clock.now += 1
    reaper.sweep()
    assert _state(clean_redis, job) == ("queued", 1, True)
