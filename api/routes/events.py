"""``GET /v1/images/{id}/events``: a job's progress and end as Server-Sent Events (api/event_stream.py)."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import Reader, Services
from api.errors import AUTHENTICATED, documented
from api.views import render_job

router = APIRouter(prefix="/v1/images", tags=["images"])

_STREAM_DOC = {
    "description": "Events until the job ends: queued, position, running, progress, then "
    "succeeded / failed / canceled (the whole job), after which the stream ends.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: _STREAM_DOC, **documented(404, *AUTHENTICATED)},
)
async def job_events(job_id: str, request: Request, services: Services, principal: Reader) -> StreamingResponse:
    """Stream the job's state changes, queue position and step progress (text/event-stream)."""
    record = await run_in_threadpool(services.jobs.get, job_id, principal.tenant)  # 404 before streaming
    render = partial(render_job, services=services, base_url=str(request.base_url))
    events = services.events.stream(services.jobs, record, render, request.is_disconnected)
    # X-Accel-Buffering: a reverse proxy (nginx) must pass events through as they come.
    return StreamingResponse(events, media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})
