"""Submitting a job: the one path ``POST /v1/images`` and ``POST /v1/images/generations`` share.

Order matters and is the same for both: validate (a refused request costs nothing), check the
webhook URL, claim the Idempotency-Key, check that a worker serves the model, admit against the
key's quotas, register the webhook, enqueue. Whatever fails after a claim or an admission gives
it back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from api.resources import ApiServices
from core.apikeys import Principal
from core.errors import NoWorker
from core.idempotency import fingerprint
from core.jobs import new_job_id, redis_errors
from core.presence import live_workers
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
    priority = principal.job_priority(body.priority)  # 422 above the key's class (core/apikeys.py)
    payload = await run_in_threadpool(
        normalize_request, body, settings, tenant=tenant, job_id=new_job_id(), now=time.time()
    )
    payload = payload.model_copy(update={"priority": priority})
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
        await run_in_threadpool(_check_served, payload, services)
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


def _check_served(payload: JobPayload, services: ApiServices) -> None:
    """Refuse (503 no_worker, nothing queued) a job for a model no live worker serves, unless
    the operator scales from zero (SFUMATO_QUEUE_WITHOUT_WORKERS): a request must never wait
    silently in a queue nobody reads. A replayed Idempotency-Key never gets here."""
    settings = services.settings
    if settings.resolved_queue_without_workers:
        return
    with redis_errors():
        workers = live_workers(services.jobs.connection, settings, payload.model)
    if workers == 0:
        raise NoWorker(
            f"no worker serves model {payload.model!r} at the moment, so nothing was queued; "
            "retry later, or choose another model (GET /v1/models shows live workers per model)",
            param="model",
        )


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
