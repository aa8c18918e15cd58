"""Jobs on RQ: enqueue, fetch, view and cancel, with JSON payloads only.

The API and the worker both go through this module, so the Redis layout (queue names, job
meta fields, result shape) is defined once. Redis failures surface as
:class:`QueueUnavailable`, which the API answers with 503 + ``Retry-After``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from core.batch_key import BATCH_TAG_FIELD, batch_tag
from core.config import Settings
from core.errors import ErrorDict, JobConflict, JobNotFound, QueueUnavailable
from core.logs import request_meta
from core.metrics import record_finished, record_submitted
from core.models import queue_name
from core.priority import DEFAULT_PRIORITY, WAKE_CAP, PriorityClass, wake_key
from core.schemas import JobPayload, JobResult, JobStatus

#: The function path recorded on each RQ job. Only the Sfumato worker executes these jobs; the
#: path names a function that explains that if a plain ``rq worker`` ever picks one up.
GENERATE_FUNC = "worker.runtime.tasks.generate"

#: meta fields (small, bounded): never prompts or images, those stay in the payload.
META_TENANT = "tenant"
META_ERROR = "error"
#: The id of the HTTP request that submitted the job (X-Request-ID), for logs on both sides.
META_REQUEST_ID = "request_id"
#: What RQ accepts as a job id (letters, digits, '_', '-'), bounded; ours are 32 hex characters.
_VALID_JOB_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")

_STATUS_MAP: dict[str, JobStatus] = {
    RQStatus.QUEUED: "queued",
    RQStatus.SCHEDULED: "queued",
    RQStatus.DEFERRED: "queued",
    RQStatus.CREATED: "queued",
    RQStatus.STARTED: "running",
    RQStatus.FINISHED: "succeeded",
    RQStatus.FAILED: "failed",
    RQStatus.STOPPED: "failed",
    RQStatus.CANCELED: "canceled",
}


def new_job_id() -> str:
    """128 random bits, hex: unguessable, safe in Redis keys and storage paths."""
    return secrets.token_hex(16)


def connect(settings: Settings, *, blocking: bool = False) -> redis.Redis:
    """A Redis client with short timeouts so an outage is an error, not a hang.

    ``blocking`` clients (the worker's BLPOP) get no read timeout; RQ sets its own.
    """
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=None if blocking else settings.redis_timeout_s,
        health_check_interval=30,
    )


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn Redis connection failures into :class:`QueueUnavailable`."""
    try:
        yield
    except (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.InvalidResponse,
        redis.exceptions.BusyLoadingError,
    ) as exc:
        # The cause (class, address) stays on the exception for the API's log (api/errors.py).
        raise QueueUnavailable("the job queue is unavailable at the moment; retry shortly") from exc


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@dataclass(frozen=True)
class JobRecord:
    """Everything the API needs to answer about one job, read in one place."""

    payload: JobPayload
    status: JobStatus
    enqueued_at: float | None
    started_at: float | None
    ended_at: float | None
    result: JobResult | None
    error: ErrorDict | None


class JobStore:
    """Enqueue, read and cancel jobs for one deployment (Settings + a Redis connection)."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def queue(self, model_id: str, priority: PriorityClass = DEFAULT_PRIORITY) -> Queue:
        """The RQ queue of one model and priority class (core/priority.py)."""
        name = queue_name(self.settings, model_id, priority)
        return Queue(name, connection=self.connection, serializer=JSONSerializer)

    def enqueue(self, payload: JobPayload) -> None:
        """Put a validated payload on its model's queue for its priority class. The payload is
        the only argument.

        The job hash also gets its batch tag (``core.batch_key.batch_tag``) in the same
        MULTI/EXEC, so a worker scanning the queue for partners never sees an untagged job; and
        a token goes on the queue's wake list, which idle workers block on (bounded; a worker
        that misses it still looks at its queues every second).
        """
        queue = self.queue(payload.model, payload.priority)
        with redis_errors(), self.connection.pipeline() as pipe:
            job = queue.enqueue_call(
                GENERATE_FUNC,
                args=[wire_payload(payload)],
                job_id=payload.job_id,
                timeout=self.settings.job_timeout_s,
                result_ttl=self.settings.result_ttl_s,
                failure_ttl=self.settings.result_ttl_s,
                ttl=self.settings.result_ttl_s,
                description=f"generate {payload.model} {payload.mode} n={payload.n}",
                meta={META_TENANT: payload.tenant, **request_meta(META_REQUEST_ID)},
                retry=self._retry(),
                pipeline=pipe,
            )
            pipe.hset(job.key, BATCH_TAG_FIELD, batch_tag(payload))
            wake = wake_key(queue.key)
            pipe.rpush(wake, "1")
            pipe.ltrim(wake, -WAKE_CAP, -1)
            pipe.expire(wake, 600)
            pipe.execute()
        record_submitted(payload)

    def _retry(self) -> Retry | None:
        """Runs left after a worker dies under the job; a re-run goes to the head of the queue
        (it was the oldest job there), so recovery is not a trip to the back of a long queue."""
        if self.settings.job_attempts <= 1:
            return None
        return Retry(max=self.settings.job_attempts - 1, enqueue_at_front=True)

    def _fetch(self, job_id: str, tenant: str) -> Job:
        if not _VALID_JOB_ID.fullmatch(job_id):  # RQ raises ValueError on these: a 404, not a 500
            raise JobNotFound(f"no job with id {job_id[:64]!r}", param="id")
        with redis_errors():
            try:
                job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            except NoSuchJobError:
                raise JobNotFound(f"no job with id {job_id!r}", param="id") from None
        if job.meta.get(META_TENANT) != tenant:
            # Another tenant's job is indistinguishable from a missing one.
            raise JobNotFound(f"no job with id {job_id!r}", param="id")
        return job

    def get(self, job_id: str, tenant: str) -> JobRecord:
        """The job's state, result and error as the API shows them."""
        job = self._fetch(job_id, tenant)
        with redis_errors():
            return record_of(job)

    def cancel(self, job_id: str, tenant: str) -> tuple[JobRecord, bool]:
        """Cancel a job: ``(record, done)``.

        A queued job is removed and never runs (``done``). A running job gets a cancel request
        that its worker sees at the next denoising step (``done`` is False: the record still says
        running). A finished job is a :class:`JobConflict`.
        """
        job = self._fetch(job_id, tenant)
        with redis_errors():
            status = _STATUS_MAP.get(job.get_status(refresh=True), "failed")
            if status == "canceled":
                return record_of(job), True
            if status in ("succeeded", "failed"):
                raise JobConflict(f"job {job_id} is {status} and can no longer be canceled", param="id")
            # Claim the job off the queue list first: LREM is atomic, so either we remove it
            # (and no worker can take it any more) or a worker already has it.
            queue_key = Queue(job.origin, connection=self.connection).key
            if status == "queued" and self.connection.lrem(queue_key, 0, job_id):
                with suppress(InvalidJobOperation):  # canceled concurrently: the outcome is the same
                    job.cancel()
                canceled = payload_of(job)
                record_finished(canceled.model, "canceled", priority=canceled.priority)
                return record_of(job), True
            self.connection.set(cancel_key(self.settings, job_id), "1", ex=self.settings.job_timeout_s + 60)
            return record_of(job), False

    def ping(self) -> bool:
        with redis_errors():
            return bool(self.connection.ping())


def wire_payload(payload: JobPayload) -> dict[str, Any]:
    """The payload as queue JSON, leaving out optional fields that hold their empty default.

    ``JobPayload`` forbids unknown fields, so a worker from before a feature (LoRAs, ControlNet,
    a refiner...) would reject every job that carries the feature's field, even empty, during a
    rolling deploy. Left out, the old worker takes plain jobs, and a new worker fills the same
    default back in; only jobs that use the feature need the new workers.
    """
    data = payload.model_dump(mode="json")
    if data.get("priority") == DEFAULT_PRIORITY:
        del data["priority"]  # the same reason: the standard queue is the one old workers read
    for name, field in JobPayload.model_fields.items():
        if field.is_required() or name not in data:
            continue
        default = field.get_default(call_default_factory=True)
        value = data[name]  # in JSON form: a tuple default is a list here
        empty_default = (
            default is None or default is False or (isinstance(default, list | tuple | dict) and not default)
        )
        if empty_default and (value is None or value is False or value == [] or value == {}):
            del data[name]
    return data


def cancel_key(settings: Settings, job_id: str) -> str:
    """Set by the API to ask the worker running ``job_id`` to stop it."""
    return f"{settings.queue_prefix}:cancel:{job_id}"


def _abandoned_error(job: Job) -> ErrorDict | None:
    """RQ fails a job whose worker died (missed heartbeats) without our meta: say so."""
    latest = job.latest_result()
    text = (latest.exc_string or "") if latest is not None else ""
    if "AbandonedJobError" in text or "stuck in intermediate queue" in text:
        return {
            "code": "worker_lost",
            "message": "the worker running this job died on its last attempt (SFUMATO_JOB_ATTEMPTS); not completed",
            "param": None,
        }
    return None


def results_key(job_id: str) -> str:
    """The Redis stream RQ appends each of the job's results (success or failure) to."""
    return Result.get_key(job_id)


def payload_of(job: Job) -> JobPayload:
    """The JobPayload an RQ job carries as its single positional argument."""
    return JobPayload.model_validate(job.args[0])


def record_of(job: Job) -> JobRecord:
    rq_status = job.get_status(refresh=True)
    status = _STATUS_MAP.get(rq_status, "failed")
    result: JobResult | None = None
    error: ErrorDict | None = None
    if status == "succeeded":
        value: Any = job.return_value()
        result = JobResult.model_validate(value) if value is not None else None
    elif status == "failed":
        unrecorded: ErrorDict = {
            "code": "internal_error",
            "message": "the job failed without a recorded reason",
            "param": None,
        }
        error = job.meta.get(META_ERROR) or _abandoned_error(job) or unrecorded
    return JobRecord(
        payload=payload_of(job),
        status=status,
        enqueued_at=_epoch(job.enqueued_at),
        started_at=_epoch(job.started_at),
        ended_at=_epoch(job.ended_at),
        result=result,
        error=error,
    )
