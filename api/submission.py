"""Submitting a job: the one path ``POST /v1/images`` and ``POST /v1/images/generations`` share.

Order matters and is the same for both: validate (a refused request costs nothing), check the
webhook URL, claim the Idempotency-Key, admit against the key's quotas, register the webhook,
enqueue. Whatever fails after a claim or an admission gives it back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from api.services import ApiServices
from core.apikeys import Principal
from core.idempotency import fingerprint
from core.jobs import new_job_id
from core.schemas import ImageRequest, JobPayload
from core.validation import normalize_request


@dataclass(frozen=True)
class Submitted:
    """The job a submit names: a new one, or (``replayed``) the one an earlier retry created."""

    job_id: str
    replayed: bool
    payload: JobPayload | None = None


async def submit(
    body: ImageRequest, services: ApiServices, principal: Principal, idempotency_key: str | None = None
) -> Submitted:
    """Validate and enqueue ``body`` for ``principal`` (blocking work runs in the threadpool)."""
    settings = services.settings
    tenant = principal.tenant
    payload = await run_in_threadpool(
        normalize_request, body, settings, tenant=tenant, job_id=new_job_id(), now=time.time()
    )
    if body.webhook_url is not None:
        await run_in_threadpool(services.webhooks.check_url, body.webhook_url)  # resolves DNS
    if idempotency_key is not None:
        body_fingerprint = fingerprint(body.model_dump(mode="json"))
        claim = await run_in_threadpool(
            services.idempotency.claim, tenant, idempotency_key, body_fingerprint, payload.job_id
        )
        if claim.replay:
            return Submitted(claim.job_id, replayed=True)
    try:
        admission = await run_in_threadpool(services.quotas.admit, principal, payload)
        try:
            await _enqueue(body, payload, services)
        except BaseException:
            await run_in_threadpool(services.quotas.release, admission)
            raise
    except BaseException:
        if idempotency_key is not None:
            await run_in_threadpool(services.idempotency.release, tenant, idempotency_key)
        raise
    return Submitted(payload.job_id, replayed=False, payload=payload)


async def _enqueue(body: ImageRequest, payload: JobPayload, services: ApiServices) -> None:
    """Enqueue, with the webhook registered first so that no ending can be missed."""
    if body.webhook_url is None:
        await run_in_threadpool(services.jobs.enqueue, payload)
        return
    await run_in_threadpool(services.webhooks.register, payload, body.webhook_url, body.webhook_events)
    try:
        await run_in_threadpool(services.jobs.enqueue, payload)
    except BaseException:
        await run_in_threadpool(services.webhooks.forget, payload.job_id)
        raise
