"""``POST /v1/images/generations``: OpenAI Images, answered synchronously through the same queue."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import Services, Writer
from api.errors import AUTHENTICATED, documented
from api.openai_compat import OpenAIImageRequest, images_response, to_image_request
from api.submission import submit
from api.views import render_job
from core.errors import JobConflict, ServiceError, WaitTimeout

router = APIRouter(prefix="/v1/images", tags=["openai"])

_OK = {
    "description": "OpenAI ImagesResponse: created, data[] (url or b64_json), output_format, size",
    "content": {"application/json": {"schema": {"type": "object"}}},
}


@router.post("/generations", responses={200: _OK, **documented(409, 504, *AUTHENTICATED)})
async def openai_generate(body: OpenAIImageRequest, request: Request, services: Services, principal: Writer) -> Any:
    """Generate images and answer in OpenAI's shape once they are ready (or 504 after
    SFUMATO_OPENAI_TIMEOUT_S, canceling the job). ``X-Sfumato-Job-Id`` names the job."""
    submitted = await submit(to_image_request(body), services, principal)
    job_id, tenant = submitted.job_id, principal.tenant
    timeout_s = services.settings.openai_timeout_s
    record = await services.waiter.wait(services.jobs, job_id, tenant, timeout_s)
    if record.status in ("queued", "running"):
        with suppress(ServiceError):  # it may end right now; either way nobody waits for it
            await run_in_threadpool(services.jobs.cancel, job_id, tenant)
        raise WaitTimeout(f"the images were not ready within {timeout_s:g} s; job {job_id} was canceled")
    if record.status == "canceled":
        raise JobConflict(f"job {job_id} was canceled before it finished", param="id")
    if record.status == "failed":
        error = record.error or {"code": "internal_error", "message": "the job failed", "param": None}
        raise ServiceError(error["message"], param=error["param"], code=error["code"])
    view = await run_in_threadpool(render_job, record, services, str(request.base_url))
    urls = [image.url for image in view.images]
    body_out = await run_in_threadpool(images_response, record, urls, body.response_format or "url", services.store)
    return JSONResponse(body_out, headers={"X-Sfumato-Job-Id": job_id})
