"""``/v1/images``: submit, read and cancel image jobs."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import Services, Tenant
from api.views import job_view
from api.waiting import FINAL_STATES, requested_wait, wait_for_final
from core.jobs import JobRecord, new_job_id
from core.schemas import ErrorResponse, ImageRequest, JobView
from core.validation import normalize_request

router = APIRouter(prefix="/v1/images", tags=["images"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such job"},
    422: {"model": ErrorResponse, "description": "Invalid request: names the field and the limit"},
    503: {"model": ErrorResponse, "description": "Queue unavailable; retry after Retry-After"},
}


def _render(record: JobRecord, services: Services, request: Request) -> JobView:
    settings = services.settings
    base_url = settings.public_url or str(request.base_url)
    return job_view(record, services.store, base_url=base_url, expiry_s=settings.url_expiry_s)


@router.post(
    "",
    status_code=202,
    response_model=JobView,
    responses={200: {"model": JobView, "description": "Finished within the requested wait"}, **_ERRORS},
)
async def create_image_job(
    body: ImageRequest,
    request: Request,
    services: Services,
    tenant: Tenant,
    wait: Annotated[float | None, Query(ge=0, description="Seconds to wait for the result")] = None,
    prefer: Annotated[str | None, Header(description="RFC 7240, e.g. 'wait=30'")] = None,
) -> JSONResponse:
    """Validate and enqueue a generation job: 202 + ``Location``, or 200 if it finished in ``wait``."""
    settings = services.settings
    payload = await run_in_threadpool(
        normalize_request, body, settings, tenant=tenant, job_id=new_job_id(), now=time.time()
    )
    await run_in_threadpool(services.jobs.enqueue, payload)
    wait_s = requested_wait(wait, prefer, settings.max_wait_s)
    if wait_s > 0:
        record = await wait_for_final(services.jobs, payload.job_id, tenant, wait_s)
    else:
        record = await run_in_threadpool(services.jobs.get, payload.job_id, tenant)
    view = _render(record, services, request)
    status = 200 if record.status in FINAL_STATES else 202
    headers = {"Location": f"/v1/images/{payload.job_id}"}
    return JSONResponse(view.model_dump(mode="json"), status_code=status, headers=headers)


@router.get("/{job_id}", response_model=JobView, responses=_ERRORS)
def get_image_job(job_id: str, request: Request, services: Services, tenant: Tenant) -> JobView:
    """The job's state; on success, image URLs (valid for SFUMATO_URL_EXPIRY_S), seeds, timings."""
    return _render(services.jobs.get(job_id, tenant), services, request)


@router.delete(
    "/{job_id}",
    response_model=JobView,
    responses={409: {"model": ErrorResponse, "description": "Job is running or finished"}, **_ERRORS},
)
def cancel_image_job(job_id: str, request: Request, services: Services, tenant: Tenant) -> JobView:
    """Cancel a queued job (it never runs). Cancelling a running or finished job is a 409."""
    return _render(services.jobs.cancel(job_id, tenant), services, request)
