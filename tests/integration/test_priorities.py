"""Priority classes on a real Redis with a real worker (tiny model, in-process): the worker
takes the highest class first, lower classes still get their share, batching crosses classes
upward, and a job on the historical queue (an API from before priorities) is still served."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.intermediate_queue import IntermediateQueue
from rq.serializers import JSONSerializer

from core.config import Settings
from core.jobs import GENERATE_FUNC, JobStore, new_job_id, wire_payload
from core.priority import PriorityClass, queue_names
from core.schemas import JobPayload
from core.storage import LocalStore
from tests.support.engine import payload
from worker.pipelines.engine import Engine
from worker.runtime.priority import ScheduledQueue
from worker.runtime.runner import SfumatoWorker


def job(priority: PriorityClass, **fields: Any) -> JobPayload:
    return payload(job_id=new_job_id(), priority=priority, created_at=time.time(), **fields)


def serve_until_empty(settings: Settings, engine: Engine, conn: redis.Redis, tmp_path: Path) -> None:
    """One worker reading every class queue of the model, in burst mode (stops when all are empty)."""
    store = LocalStore(tmp_path / "images", b"k" * 32)
    worker = SfumatoWorker(
        list(queue_names(settings, "tiny").values()), engine=engine, store=store, settings=settings, connection=conn
    )
    worker.work(burst=True)


def started_order(store: JobStore, jobs: list[JobPayload]) -> list[str]:
    records = {p.job_id: store.get(p.job_id, p.tenant) for p in jobs}
    assert all(r.status == "succeeded" for r in records.values()), {k: r.status for k, r in records.items()}
    return [job_id for job_id, _ in sorted(records.items(), key=lambda kv: kv[1].started_at or 0)]


def test_the_worker_takes_the_interactive_job_before_a_batch_backlog(
    make_settings, clean_redis: redis.Redis, engine: Engine, tmp_path: Path
) -> None:
    settings = make_settings(max_batch=1, upload_stage_depth=0, priority_share=10)
    store = JobStore(clean_redis, settings)
    bulk = [job("batch", prompt=f"bulk {i}") for i in range(3)]
    standard, urgent = job("standard"), job("interactive")
    for p in [*bulk, standard, urgent]:  # the interactive job arrives last
        store.enqueue(p)
    assert clean_redis.llen(store.queue("tiny", "batch").key) == 3
    serve_until_empty(settings, engine, clean_redis, tmp_path)
    order = started_order(store, [*bulk, standard, urgent])
    assert order == [urgent.job_id, standard.job_id, *(p.job_id for p in bulk)]


def test_a_lower_class_gets_its_share_while_a_higher_one_is_busy(
    make_settings, clean_redis: redis.Redis, engine: Engine, tmp_path: Path
) -> None:
    settings = make_settings(max_batch=1, upload_stage_depth=0, priority_share=2)
    store = JobStore(clean_redis, settings)
    urgent = [job("interactive", prompt=f"i{i}") for i in range(4)]
    bulk = [job("batch", prompt=f"b{i}") for i in range(2)]
    for p in [*bulk, *urgent]:
        store.enqueue(p)
    serve_until_empty(settings, engine, clean_redis, tmp_path)
    order = started_order(store, [*bulk, *urgent])
    # share 2: once passed over, the batch class gets the next leader.
    kinds = ["b" if job_id in {p.job_id for p in bulk} else "i" for job_id in order]
    assert kinds == ["i", "b", "i", "b", "i", "i"], kinds


def batch_ids(store: JobStore, jobs: list[JobPayload]) -> dict[str, str]:
    ids = {}
    for p in jobs:
        result = store.get(p.job_id, p.tenant).result
        assert result is not None and result.batch is not None, p.job_id
        ids[p.job_id] = result.batch.id
    return ids


def test_a_bulk_leader_takes_a_compatible_interactive_job_as_its_partner(
    make_settings, clean_redis: redis.Redis, engine: Engine, tmp_path: Path
) -> None:
    settings = make_settings(max_batch=4, max_wait_ms=0, upload_stage_depth=0, priority_share=2)
    store = JobStore(clean_redis, settings)
    first = job("interactive", steps=4)  # another batch key: leads first, alone
    urgent = job("interactive", prompt="urgent", tenant="t2")
    bulk = job("batch", prompt="bulk", tenant="t3")  # same key as urgent
    for p in [bulk, first, urgent]:
        store.enqueue(p)
    serve_until_empty(settings, engine, clean_redis, tmp_path)
    ids = batch_ids(store, [first, urgent, bulk])
    # After one pass-over the batch class is owed the next leader (share 2); its leader scans the
    # classes at or above its own and takes the interactive job: two tenants, two classes, one batch.
    assert ids[bulk.job_id] == ids[urgent.job_id] != ids[first.job_id]


def test_an_interactive_leader_never_waits_on_bulk_partners(
    make_settings, clean_redis: redis.Redis, engine: Engine, tmp_path: Path
) -> None:
    settings = make_settings(max_batch=4, max_wait_ms=0, upload_stage_depth=0, priority_share=0)
    store = JobStore(clean_redis, settings)
    bulk = [job("batch", prompt=f"bulk {i}") for i in range(3)]
    urgent = job("interactive", prompt="urgent")  # same key as the bulk jobs
    for p in [*bulk, urgent]:
        store.enqueue(p)
    serve_until_empty(settings, engine, clean_redis, tmp_path)
    ids = batch_ids(store, [*bulk, urgent])
    assert ids[urgent.job_id] not in {ids[p.job_id] for p in bulk}  # ran alone, at batch size 1
    assert len({ids[p.job_id] for p in bulk}) == 1  # the bulk jobs still batch together


def test_a_job_on_the_historical_queue_is_still_served(
    make_settings, clean_redis: redis.Redis, engine: Engine, tmp_path: Path
) -> None:
    """Rolling deploy: an API replica from before priorities enqueues on ``sfumato:<model>`` with
    plain RQ (no priority field, no batch tag, no wake token); the new worker serves it."""
    settings = make_settings(max_batch=2, upload_stage_depth=0)
    old = payload(job_id=new_job_id(), created_at=time.time())
    wire = wire_payload(old)
    assert "priority" not in wire
    Queue("sfumato:tiny", connection=clean_redis, serializer=JSONSerializer).enqueue_call(
        GENERATE_FUNC, args=[wire], job_id=old.job_id, meta={"tenant": old.tenant}
    )
    serve_until_empty(settings, engine, clean_redis, tmp_path)
    record = JobStore(clean_redis, settings).get(old.job_id, old.tenant)
    assert record.status == "succeeded" and record.payload.priority == "standard"


def test_the_leader_is_moved_to_its_intermediate_queue_not_popped(make_settings, clean_redis: redis.Redis) -> None:
    """RQ's multi-queue BLPOP would drop a job a worker dies holding; ours leaves it where RQ's
    maintenance finds it, in the intermediate list of its own class queue."""
    settings = make_settings()
    store = JobStore(clean_redis, settings)
    bulk, urgent = job("batch"), job("interactive")
    store.enqueue(bulk)
    store.enqueue(urgent)
    queues = [ScheduledQueue(name, connection=clean_redis, serializer=JSONSerializer) for name in
              queue_names(settings, "tiny").values()]  # fmt: skip
    taken = ScheduledQueue.dequeue_any(queues, None, connection=clean_redis, serializer=JSONSerializer)
    assert taken is not None
    got, queue = taken
    assert got.id == urgent.job_id and queue.name == "sfumato:tiny:interactive"
    assert IntermediateQueue(queue.key, clean_redis).get_job_ids() == [urgent.job_id]
    with pytest.raises(DequeueTimeout):  # the interactive queue alone is empty now: blocks, then times out
        ScheduledQueue.dequeue_any(queues[:1], 1, connection=clean_redis, serializer=JSONSerializer)


def test_the_command_channel_is_read_in_short_polls_so_a_worker_exits_promptly(
    make_settings: Any, clean_redis: redis.Redis, engine: Engine, tmp_path: Path
) -> None:
    """RQ reads its command channel in 60 s blocks and its unsubscribe waits for the read in
    progress: every exit (SIGTERM drain, burst run) then lagged up to a minute after the last job."""
    settings = make_settings()
    worker = SfumatoWorker(
        list(queue_names(settings, "tiny").values()), engine=engine, store=LocalStore(tmp_path, b"k" * 32),
        settings=settings, connection=clean_redis,
    )  # fmt: skip
    worker.subscribe()
    try:
        assert worker.pubsub_thread is not None and worker.pubsub_thread.sleep_time <= 1
        assert worker.pubsub_thread.is_alive()
    finally:
        worker.unsubscribe()
    assert not worker.pubsub_thread.is_alive()
