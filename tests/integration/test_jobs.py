"""core.jobs JobStore on a real, private Redis: JSON payloads, tenancy, cancel, outages."""

from __future__ import annotations

import json
import socket
import time
import zlib
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from core.config import Settings
from core.errors import JobConflict, JobNotFound, QueueUnavailable
from core.jobs import GENERATE_FUNC, META_ERROR, META_TENANT, JobStore, cancel_key, connect, new_job_id, wire_payload
from core.models import queue_name
from core.schemas import JobPayload, JobResult, StoredImage, Timings
from devstack.net import free_port
from tests.conftest import SettingsFactory

TENANT = "acme"


@pytest.fixture
def settings(make_settings: SettingsFactory, clean_redis: redis.Redis) -> Settings:
    return make_settings()


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    connection = connect(settings)
    yield JobStore(connection, settings)
    connection.close()


def make_payload(**changes: Any) -> JobPayload:
    fields: dict[str, Any] = {
        "job_id": new_job_id(),
        "tenant": TENANT,
        "model": "tiny",
        "mode": "txt2img",
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "seed": 1234,
        "n": 2,
        "clip_skip": 0,
        "output_format": "png",
        "created_at": time.time(),
    }
    return JobPayload(**{**fields, **changes})


def queued_ids(store: JobStore, model: str = "tiny") -> list[str]:
    return store.queue(model).get_job_ids()


def take_like_a_worker(store: JobStore, payload: JobPayload) -> tuple[Job, Execution]:
    """Dequeue and mark started the way an RQ worker does (without running anything)."""
    taken = Queue.dequeue_any(
        [store.queue(payload.model)], None, connection=store.connection, serializer=JSONSerializer
    )
    assert taken is not None
    job, _ = taken
    assert job.id == payload.job_id
    with store.connection.pipeline() as pipe:
        job.prepare_for_execution("test-worker", pipeline=pipe)
        execution = Execution.create(job, ttl=60, pipeline=pipe, worker_name="test-worker")
        pipe.execute()
    return job, execution


def finish_like_a_worker(store: JobStore, taken: tuple[Job, Execution], result: JobResult) -> None:
    """Record success as rq's worker does: status, a Result entry, the finished registry."""
    job, execution = taken
    ttl = store.settings.result_ttl_s
    with store.connection.pipeline() as pipe:
        execution.delete(job, pipeline=pipe)
        job.set_status(JobStatus.FINISHED, pipeline=pipe)
        Result.create(job, Result.Type.SUCCESSFUL, ttl=ttl, return_value=result.model_dump(mode="json"), pipeline=pipe)
        job.finished_job_registry.add(job, ttl, pipeline=pipe)
        pipe.execute()


def fail_like_a_worker(store: JobStore, taken: tuple[Job, Execution], error: dict[str, Any] | None) -> None:
    """Record failure as the Sfumato worker will: the error object in meta, then FAILED."""
    job, execution = taken
    if error is not None:
        job.meta[META_ERROR] = error
        job.save_meta()
    with store.connection.pipeline() as pipe:
        execution.delete(job, pipeline=pipe)
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job.failed_job_registry.add(job, ttl=store.settings.result_ttl_s, exc_string="boom", pipeline=pipe)
        pipe.execute()


# --- enqueue: JSON only ----------------------------------------------------------------


def test_enqueue_stores_json_not_pickle(store: JobStore, clean_redis: redis.Redis) -> None:
    payload = make_payload()
    store.enqueue(payload)
    raw = cast(dict[bytes, bytes], clean_redis.hgetall(f"rq:job:{payload.job_id}"))
    assert raw, "no job hash written"
    # rq zlib-compresses the serialized call; inside must be JSON, never a pickle (0x80 ...).
    data = zlib.decompress(raw[b"data"])
    assert not data.startswith(b"\x80")
    func, instance, args, kwargs = json.loads(data)
    assert func == GENERATE_FUNC and instance is None and kwargs == {}
    assert args == [wire_payload(payload)] and JobPayload.model_validate(args[0]) == payload
    assert json.loads(raw[b"meta"]) == {META_TENANT: TENANT}
    assert "a lighthouse" not in raw[b"meta"].decode()  # prompts stay out of meta
    # Every other field is plain text, not a serialized object.
    for field, value in raw.items():
        if field != b"data":
            assert not value.startswith(b"\x80"), field
            value.decode("utf-8")


def test_enqueue_puts_job_on_model_queue(store: JobStore, clean_redis: redis.Redis, settings: Settings) -> None:
    first, second = make_payload(), make_payload(model="other")
    store.enqueue(first)
    store.enqueue(second)
    assert queue_name(settings, "tiny") == "sfumato:tiny"
    assert clean_redis.lrange("rq:queue:sfumato:tiny", 0, -1) == [first.job_id.encode()]
    assert clean_redis.lrange("rq:queue:sfumato:other", 0, -1) == [second.job_id.encode()]


def test_queue_prefix_is_configurable(make_settings: SettingsFactory, clean_redis: redis.Redis) -> None:
    settings = make_settings(queue_prefix="staging")
    payload = make_payload()
    JobStore(connect(settings), settings).enqueue(payload)
    assert clean_redis.lrange("rq:queue:staging:tiny", 0, -1) == [payload.job_id.encode()]


# --- get --------------------------------------------------------------------------------


def test_get_shows_queued_with_payload(store: JobStore) -> None:
    payload = make_payload()
    before = time.time()
    store.enqueue(payload)
    record = store.get(payload.job_id, TENANT)
    assert record.status == "queued"
    assert record.payload == payload
    assert record.enqueued_at is not None and before - 1 <= record.enqueued_at <= time.time() + 1
    assert (record.started_at, record.ended_at, record.result, record.error) == (None, None, None, None)


def test_other_tenant_sees_not_found(store: JobStore) -> None:
    payload = make_payload()
    store.enqueue(payload)
    with pytest.raises(JobNotFound) as info:
        store.get(payload.job_id, "intruder")
    with pytest.raises(JobNotFound) as unknown:
        store.get(new_job_id(), TENANT)
    # Indistinguishable from a job that does not exist.
    assert info.value.code == unknown.value.code == "not_found"
    assert info.value.param == "id"
    with pytest.raises(JobNotFound):
        store.cancel(payload.job_id, "intruder")
    assert store.get(payload.job_id, TENANT).status == "queued"  # untouched by the attempt


def test_unknown_id_is_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get(new_job_id(), TENANT)
    with pytest.raises(JobNotFound):
        store.cancel(new_job_id(), TENANT)


def test_running_then_succeeded(store: JobStore) -> None:
    payload = make_payload()
    store.enqueue(payload)
    taken = take_like_a_worker(store, payload)
    running = store.get(payload.job_id, TENANT)
    assert running.status == "running" and running.started_at is not None
    result = JobResult(
        images=[
            StoredImage(key=f"{TENANT}/{payload.job_id}/{i}.png", index=i, seed=s, width=64, height=64, format="png")
            for i, s in enumerate(payload.seeds)
        ],
        timings=Timings(inference_s=0.5, total_s=0.6),
    )
    finish_like_a_worker(store, taken, result)
    done = store.get(payload.job_id, TENANT)
    assert done.status == "succeeded"
    assert done.result == result
    assert done.error is None


def test_failed_job_shows_recorded_error(store: JobStore) -> None:
    payload = make_payload()
    store.enqueue(payload)
    error = {"code": "generation_failed", "message": "the model raised", "param": None}
    fail_like_a_worker(store, take_like_a_worker(store, payload), error)
    record = store.get(payload.job_id, TENANT)
    assert (record.status, record.error, record.result) == ("failed", error, None)


def test_failed_job_without_reason_gets_internal_error(store: JobStore) -> None:
    payload = make_payload()
    store.enqueue(payload)
    fail_like_a_worker(store, take_like_a_worker(store, payload), None)
    record = store.get(payload.job_id, TENANT)
    assert record.status == "failed"
    assert record.error is not None and record.error["code"] == "internal_error"


# --- cancel -----------------------------------------------------------------------------


def test_cancel_queued_job(store: JobStore) -> None:
    keep, cancel = make_payload(), make_payload()
    store.enqueue(keep)
    store.enqueue(cancel)
    record, done = store.cancel(cancel.job_id, TENANT)
    assert record.status == "canceled" and done
    assert queued_ids(store) == [keep.job_id]
    assert store.get(cancel.job_id, TENANT).status == "canceled"
    assert store.cancel(cancel.job_id, TENANT)[0].status == "canceled"  # idempotent


def test_cancel_running_job_asks_its_worker_to_stop_it(store: JobStore, settings: Settings) -> None:
    payload = make_payload()
    store.enqueue(payload)
    take_like_a_worker(store, payload)
    record, done = store.cancel(payload.job_id, TENANT)
    assert record.status == "running" and not done
    assert store.connection.get(cancel_key(settings, payload.job_id)) == b"1"


def test_cancel_finished_job_conflicts(store: JobStore) -> None:
    payload = make_payload()
    store.enqueue(payload)
    finish_like_a_worker(store, take_like_a_worker(store, payload), JobResult(images=[], timings=Timings()))
    with pytest.raises(JobConflict) as info:
        store.cancel(payload.job_id, TENANT)
    assert "succeeded" in info.value.message
    assert store.get(payload.job_id, TENANT).status == "succeeded"


# --- Redis unreachable ------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_queue_unavailable_when_nothing_listens(make_settings: SettingsFactory) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    store = JobStore(connect(settings), settings)
    payload = make_payload()
    with pytest.raises(QueueUnavailable) as info:
        store.enqueue(payload)
    assert info.value.code == "queue_unavailable" and info.value.retry_after_s > 0
    with pytest.raises(QueueUnavailable):
        store.get(payload.job_id, TENANT)
    with pytest.raises(QueueUnavailable):
        store.cancel(payload.job_id, TENANT)
    with pytest.raises(QueueUnavailable):
        store.ping()


@pytest.mark.timeout(30)
def test_queue_unavailable_when_redis_never_answers(make_settings: SettingsFactory) -> None:
    # A listener that accepts connections but never replies: only the socket timeout ends it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.5)
        with pytest.raises(QueueUnavailable):
            JobStore(connect(settings), settings).get(new_job_id(), TENANT)


def test_ping(store: JobStore) -> None:
    assert store.ping() is True
