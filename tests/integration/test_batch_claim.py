"""Partner claiming on a real Redis: only same-key jobs, capacity in images, atomic, oldest first."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.serializers import JSONSerializer

from core.batch_key import BatchKey
from core.config import Settings
from core.jobs import JobStore, connect, new_job_id
from core.models import queue_name
from core.schemas import JobPayload
from tests.conftest import SettingsFactory
from worker.runtime.batcher import BatchPolicy, PartnerClaimer, gather_partners


@pytest.fixture
def settings(make_settings: SettingsFactory, clean_redis: redis.Redis) -> Settings:
    return make_settings()


def payload(**changes: Any) -> JobPayload:
    fields: dict[str, Any] = {
        "job_id": new_job_id(),
        "tenant": "t",
        "model": "tiny",
        "mode": "txt2img",
        "prompt": "p",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "seed": 1,
        "n": 1,
        "clip_skip": 0,
        "output_format": "png",
        "created_at": time.time(),
    }
    return JobPayload(**{**fields, **changes})


def setup(settings: Settings, payloads: list[JobPayload]) -> tuple[redis.Redis, Queue, PartnerClaimer]:
    store = JobStore(connect(settings), settings)
    for p in payloads:
        store.enqueue(p)
    conn = connect(settings)
    queue = Queue(queue_name(settings, "tiny"), connection=conn, serializer=JSONSerializer)
    return conn, queue, PartnerClaimer(conn, queue, scan_depth=64)


def test_claims_only_jobs_with_the_same_key_counting_images(settings: Settings) -> None:
    a1, b1, a2, a4, a_exact, a3 = (
        payload(prompt="a1"),
        payload(steps=5),
        payload(prompt="a2", seed=9),
        payload(prompt="a4", n=4),
        payload(exact=True),
        payload(prompt="a3", negative_prompt="x"),
    )
    conn, queue, claimer = setup(settings, [a1, b1, a2, a4, a_exact, a3])
    job, _ = Queue.dequeue_any([queue], None, connection=conn, serializer=JSONSerializer)
    assert job.id == a1.job_id  # the leader is the head of the queue
    digest = BatchKey.of(a1).digest()
    claimed = claimer.claim(digest, capacity=7)
    # a4 (4 images) fits after a2 (1); a3 then fits too: 1 + 4 + 1 = 6 <= 7.
    assert claimed == [(a2.job_id, 1), (a4.job_id, 4), (a3.job_id, 1)]
    assert queue.get_job_ids() == [b1.job_id, a_exact.job_id]
    intermediate = IntermediateQueue(queue.key, conn).get_job_ids()
    assert set(intermediate) == {a1.job_id, a2.job_id, a4.job_id, a3.job_id}
    assert claimer.claim(digest, capacity=7) == []


def test_a_job_larger_than_the_room_left_is_skipped_not_split(settings: Settings) -> None:
    big, small = payload(n=4), payload(n=1)
    _, queue, claimer = setup(settings, [big, small])
    assert claimer.claim(BatchKey.of(big).digest(), capacity=2) == [(small.job_id, 1)]
    assert queue.get_job_ids() == [big.job_id]


def test_canceled_and_expired_jobs_are_never_claimed(settings: Settings) -> None:
    canceled, expired, live = payload(), payload(), payload()
    conn, _queue, claimer = setup(settings, [canceled, expired, live])
    JobStore(conn, settings).cancel(canceled.job_id, "t")
    conn.delete(f"rq:job:{expired.job_id}")  # its TTL ran out while queued
    assert claimer.claim(BatchKey.of(live).digest(), capacity=8) == [(live.job_id, 1)]


def test_concurrent_claimers_never_take_the_same_job(settings: Settings) -> None:
    jobs = [payload(prompt=f"p{i}") for i in range(60)]
    _conn, queue, _ = setup(settings, jobs)
    digest = BatchKey.of(jobs[0]).digest()
    taken: list[list[str]] = [[] for _ in range(4)]

    def grab(slot: int) -> None:
        claimer = PartnerClaimer(connect(settings), queue, scan_depth=64)
        while True:
            got = claimer.claim(digest, capacity=3)
            if not got:
                return
            taken[slot].extend(job_id for job_id, _ in got)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    everything = [job_id for slot in taken for job_id in slot]
    assert sorted(everything) == sorted(p.job_id for p in jobs)
    assert len(everything) == len(set(everything))


def test_a_partner_arriving_during_the_wait_joins_the_batch(settings: Settings) -> None:
    leader, late = payload(prompt="leader"), payload(prompt="late")
    conn, queue, claimer = setup(settings, [leader])
    Queue.dequeue_any([queue], None, connection=conn, serializer=JSONSerializer)
    digest = BatchKey.of(leader).digest()
    store = JobStore(connect(settings), settings)
    polls = []

    def claim(capacity: int) -> list[tuple[str, int]]:
        polls.append(capacity)
        if len(polls) == 2:
            store.enqueue(late)  # arrives while the leader waits
        return claimer.claim(digest, capacity)

    policy = BatchPolicy(max_images=2, max_wait_s=30.0, poll_interval_s=0.001)
    assert gather_partners(1, False, claim, policy) == [late.job_id]
