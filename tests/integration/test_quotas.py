"""core.quotas on a real Redis with real RQ jobs: buckets, the concurrency slot coming back
however a job ends, the queue cap, and atomicity under concurrent admissions."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from core.apikeys import SCOPES, KeyLimits, Principal
from core.config import Settings
from core.errors import InvalidRequest, QueueFull, RateLimited
from core.jobs import JobStore, connect, new_job_id
from core.quotas import Quotas
from core.schemas import JobPayload
from tests.conftest import SettingsFactory


@pytest.fixture
def settings(make_settings: SettingsFactory, clean_redis: redis.Redis) -> Settings:
    return make_settings(max_queue_depth=0)


def principal(settings: Settings, key_id: str = "key-a", **limits: Any) -> Principal:
    defaults = {"rate_limit_rps": 0, "images_per_minute": 0, "max_concurrent_jobs": 0}
    resolved = KeyLimits(**{**defaults, **limits}).resolve(settings)
    return Principal(key_id=key_id, tenant="acme", scopes=frozenset(SCOPES), limits=resolved)


def payload(n: int = 1) -> JobPayload:
    return JobPayload(
        job_id=new_job_id(), tenant="acme", model="tiny", mode="txt2img", prompt="p", negative_prompt="",
        width=64, height=64, steps=2, guidance_scale=7.5, scheduler="ddim", seed=1, n=n, clip_skip=0,
        output_format="png", created_at=time.time(),
    )  # fmt: skip


def submit(quotas: Quotas, who: Principal, n: int = 1) -> JobPayload:
    job = payload(n)
    quotas.admit(who, job)
    quotas.jobs.enqueue(job)
    return job


def build(settings: Settings, **kwargs: Any) -> Quotas:
    return Quotas(connect(settings), settings, JobStore(connect(settings), settings), **kwargs)


def test_request_bucket_allows_the_burst_then_names_the_limit(settings: Settings) -> None:
    quotas = build(settings)
    who = principal(settings, rate_limit_rps=0.01, rate_limit_burst=5)
    for _ in range(5):
        quotas.check_request(who)
    with pytest.raises(RateLimited) as info:
        quotas.check_request(who)
    assert info.value.param == "requests_per_second" and info.value.retry_after_s >= 1
    quotas.check_request(principal(settings, "key-b", rate_limit_rps=0.01, rate_limit_burst=5))  # other key


def test_images_per_minute_counts_n_and_refusals_cost_nothing(settings: Settings) -> None:
    quotas = build(settings)
    who = principal(settings, images_per_minute=10)
    submit(quotas, who, 4)
    submit(quotas, who, 4)
    with pytest.raises(RateLimited) as info:
        submit(quotas, who, 4)
    assert info.value.param == "images_per_minute" and "10 images per minute" in info.value.message
    submit(quotas, who, 2)  # exactly 10: the refused 4 took nothing
    with pytest.raises(RateLimited):
        submit(quotas, who, 1)
    with pytest.raises(InvalidRequest) as too_big:
        quotas.admit(principal(settings, "key-b", images_per_minute=3), payload(4))
    assert too_big.value.param == "n"


def _set_status(settings: Settings, job_id: str, status: RQStatus) -> None:
    job = Job.fetch(job_id, connection=connect(settings), serializer=JSONSerializer)
    job.set_status(status)


@pytest.mark.parametrize("ending", ["finished", "failed", "stopped", "canceled", "expired"])
def test_a_concurrency_slot_comes_back_however_the_job_ends(settings: Settings, ending: str) -> None:
    quotas = build(settings, grace_s=0)
    who = principal(settings, max_concurrent_jobs=2)
    first, _ = submit(quotas, who), submit(quotas, who)
    with pytest.raises(RateLimited) as info:
        submit(quotas, who)
    assert info.value.param == "concurrent_jobs"
    if ending == "canceled":
        quotas.jobs.cancel(first.job_id, "acme")
    elif ending == "expired":
        quotas.connection.delete(Job.key_for(first.job_id))  # what the job's TTL does
    else:
        _set_status(settings, first.job_id, RQStatus(ending))
    submit(quotas, who)
    with pytest.raises(RateLimited):
        submit(quotas, who)


def test_running_and_just_admitted_jobs_keep_their_slot(settings: Settings) -> None:
    quotas = build(settings)  # default grace: an id without a job hash yet is still counted
    who = principal(settings, max_concurrent_jobs=2)
    running = submit(quotas, who)
    _set_status(settings, running.job_id, RQStatus.STARTED)
    quotas.admit(who, payload())  # admitted, enqueue still "in flight"
    with pytest.raises(RateLimited):
        submit(quotas, who)


def test_released_admission_frees_the_slot(settings: Settings) -> None:
    quotas = build(settings)
    who = principal(settings, max_concurrent_jobs=1)
    admission = quotas.admit(who, payload())
    quotas.release(admission)  # e.g. the enqueue failed
    submit(quotas, who)


def test_queue_depth_cap_is_global_across_keys(make_settings: SettingsFactory, clean_redis: redis.Redis) -> None:
    settings = make_settings(max_queue_depth=3)
    quotas = build(settings)
    for key in ("a", "b", "c"):
        submit(quotas, principal(settings, key))
    with pytest.raises(QueueFull) as info:
        submit(quotas, principal(settings, "d"))
    assert (info.value.code, info.value.param, info.value.retry_after_s) == ("queue_full", "queue_depth", 5)


def test_concurrent_admissions_from_many_threads_never_exceed_the_limit(settings: Settings) -> None:
    replicas = [build(settings) for _ in range(4)]  # four "API replicas", one Redis
    who = principal(settings, max_concurrent_jobs=5, images_per_minute=1000)

    def attempt(i: int) -> bool:
        try:
            replicas[i % 4].admit(who, payload())
            return True
        except RateLimited:
            return False

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(64)))
    assert sum(results) == 5
    assert replicas[0].live_jobs("key-a") == 5


def test_tenant_index_lists_newest_first(settings: Settings) -> None:
    quotas = build(settings)
    jobs = [submit(quotas, principal(settings)) for _ in range(3)]
    assert quotas.recent_job_ids("acme", 2) == [jobs[2].job_id, jobs[1].job_id]
    assert quotas.recent_job_ids("other", 10) == []
