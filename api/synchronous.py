"""Answering a request synchronously: submit a job, wait for it to end, and hand back its record.

The OpenAI Images endpoints and the A1111-compatible ``/sdapi/v1`` endpoints answer in one HTTP
call, but they go through the same path as ``POST /v1/images`` (validation, quotas, queue,
batching workers): only the waiting is theirs. One rule for all of them: a job that is not
ready within ``timeout_s`` is canceled (nobody waits for it any more) and the answer is a 504.
"""

from __future__ import annotations

from contextlib import suppress

from starlette.concurrency import run_in_threadpool

from api.resources import ApiServices
from api.submission import submit
from core.apikeys import Principal
from core.errors import JobConflict, ServiceError, WaitTimeout
from core.jobs import JobRecord
from core.schemas import ImageRequest


async def wait_until_final(services: ApiServices, job_id: str, tenant: str, timeout_s: float) -> JobRecord:
    """The job's final record; a 504 (job canceled) when it is not final within ``timeout_s``."""
    record = await services.waiter.wait(services.jobs, job_id, tenant, timeout_s)
    if record.status in ("queued", "running"):
        with suppress(ServiceError):  # it may end right now; either way nobody waits for it
            await run_in_threadpool(services.jobs.cancel, job_id, tenant)
        raise WaitTimeout(f"the images were not ready within {timeout_s:g} s; job {job_id} was canceled")
    return record


def raise_unless_succeeded(record: JobRecord) -> None:
    """Turn a canceled (409) or failed job (its own stable code and message) into the error."""
    if record.status == "canceled":
        raise JobConflict(f"job {record.payload.job_id} was canceled before it finished", param="id")
    if record.status == "failed":
        error = record.error or {"code": "internal_error", "message": "the job failed", "param": None}
        raise ServiceError(error["message"], param=error["param"], code=error["code"])


async def generate_and_wait(
    body: ImageRequest, services: ApiServices, principal: Principal, timeout_s: float | None = None
) -> JobRecord:
    """Submit ``body`` for ``principal`` and return the succeeded job's record (errors as above).

    ``timeout_s`` defaults to ``SFUMATO_OPENAI_TIMEOUT_S``, the bound every synchronous
    endpoint shares."""
    submitted = await submit(body, services, principal)
    limit = services.settings.openai_timeout_s if timeout_s is None else timeout_s
    record = await wait_until_final(services, submitted.job_id, principal.tenant, limit)
    raise_unless_succeeded(record)
    return record
