"""``/v1/images``: submit, read and cancel image jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import Reader, Services, Writer
from api.errors import AUTHENTICATED, documented
from api.submission import submit
from api.views import render_job
from api.waiting import FINAL_STATES, requested_wait
from core.errors import JobConflict, JobNotFound
from core.jobs import JobRecord
from core.schemas import ImageRequest, JobList, JobView

router = APIRouter(prefix="/v1/images", tags=["images"])

_ERRORS: dict[int | str, dict[str, Any]] = documented(404, *AUTHENTICATED)


def _render(record: JobRecord, services: Services, request: Request) -> JobView:
    """The job as clients see it, with its live extras (blocking: reads Redis)."""
    return render_job(record, services, str(request.base_url))


@router.post(
    "",
    status_code=202,
    response_model=JobView,
    responses={
        200: {"model": JobView, "description": "Finished within the requested wait"},
        **documented(409, *AUTHENTICATED),
    },
)
async def create_image_job(
    body: ImageRequest,
    request: Request,
    services: Services,
    principal: Writer,
    wait: Annotated[float | None, Query(ge=0, description="Seconds to wait for the result")] = None,
    prefer: Annotated[str | None, Header(description="RFC 7240, e.g. 'wait=30'")] = None,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", description="Retry-safe submit: same key + body, same job")
    ] = None,
) -> JSONResponse:
    """Validate and enqueue a generation job: 202 + ``Location``, or 200 if it finished in ``wait``."""
    settings = services.settings
    tenant = principal.tenant
    submitted = await submit(body, services, principal, idempotency_key)
    if submitted.replayed:
        return await _replay(submitted.job_id, request, services, tenant)
    job_id = submitted.job_id
    wait_s = requested_wait(wait, prefer, settings.max_wait_s)
    if wait_s > 0:
        record = await services.waiter.wait(services.jobs, job_id, tenant, wait_s)
    else:
        record = await run_in_threadpool(services.jobs.get, job_id, tenant)
    view = await run_in_threadpool(_render, record, services, request)
    status = 200 if record.status in FINAL_STATES else 202
    headers = {"Location": f"/v1/images/{job_id}"}
    return JSONResponse(view.model_dump(mode="json"), status_code=status, headers=headers)


async def _replay(job_id: str, request: Request, services: Services, tenant: str) -> JSONResponse:
    """The answer to a retried submit: the original job, as it is now."""
    try:
        record = await run_in_threadpool(services.jobs.get, job_id, tenant)
    except JobNotFound:
        raise JobConflict(
            "a request with this Idempotency-Key is still being enqueued; retry shortly", param="Idempotency-Key"
        ) from None
    view = await run_in_threadpool(_render, record, services, request)
    status = 200 if record.status in FINAL_STATES else 202
    headers = {"Location": f"/v1/images/{job_id}", "Idempotent-Replayed": "true"}
    return JSONResponse(view.model_dump(mode="json"), status_code=status, headers=headers)


@router.get("", response_model=JobList, responses=documented(*AUTHENTICATED))
def list_image_jobs(
    request: Request,
    services: Services,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=100, description="Most jobs to return, newest first")] = 20,
) -> JobList:
    """The caller's tenant's most recent jobs (those still readable), newest first."""
    views = []
    for job_id in services.quotas.recent_job_ids(principal.tenant, limit):
        try:
            record = services.jobs.get(job_id, principal.tenant)  # ownership checked again
        except JobNotFound:
            continue  # expired
        views.append(_render(record, services, request))
    return JobList(data=views)


@router.get("/{job_id}", response_model=JobView, responses=_ERRORS)
def get_image_job(job_id: str, request: Request, services: Services, principal: Reader) -> JobView:
    """The job's state; on success, image URLs (valid for SFUMATO_URL_EXPIRY_S), seeds, timings."""
    return _render(services.jobs.get(job_id, principal.tenant), services, request)


@router.delete(
    "/{job_id}",
    response_model=JobView,
    responses={
        202: {"model": JobView, "description": "Cancel requested for a running job"},
        **documented(404, 409, *AUTHENTICATED),
    },
)
def cancel_image_job(job_id: str, request: Request, services: Services, principal: Writer) -> JSONResponse:
    """Cancel a job. Queued: removed, never runs (200, ``canceled``). Running: its worker stops it at
    the next denoising step (202; poll until ``canceled``; co-batched jobs finish normally).
    Finished: 409."""
    record, done = services.jobs.cancel(job_id, principal.tenant)
    view = _render(record, services, request)
    return JSONResponse(view.model_dump(mode="json"), status_code=200 if done else 202)
