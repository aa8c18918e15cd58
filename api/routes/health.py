"""Probes: ``/healthz`` (the process answers) and ``/readyz`` (Redis is reachable)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import Services
from api.errors import documented

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=documented(503))
async def readyz(services: Services) -> dict[str, str]:
    """Ready when Redis answers; a QueueUnavailable becomes a 503 with Retry-After."""
    await run_in_threadpool(services.jobs.ping)
    return {"status": "ready"}
