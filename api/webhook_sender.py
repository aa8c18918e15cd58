"""The webhook sender: a loop in every API process that finds ended jobs and delivers their events.

Each tick: sweep (jobs with a webhook that have ended become due), claim due deliveries under a
lease, send each through the SSRF-safe fetcher (``core/safe_fetch.py``) in a thread, record
the outcome (``core/webhooks.py`` explains the schedule and why it lives in Redis). Replicas
share the work through the claims; a tick that fails (Redis away) is logged and the loop goes on.

A delivery is a POST of ``{"id", "type": "image.<state>", "created_at", "data": <the job>}``
signed with the tenant's secret (``core/webhook_signature.py``: Standard Webhooks headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from api.resources import ApiServices
from api.views import render_job
from core.errors import JobNotFound, ServiceError, UnsafeUrl
from core.safe_fetch import fetch
from core.webhook_signature import signed_headers

log = logging.getLogger("sfumato.api")

DELIVERIES = Counter(
    "sfumato_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, retrying, failed, skipped).",
    ["outcome"],
)
CLAIM_BATCH = 16
USER_AGENT = "Sfumato-Webhooks/1"


class WebhookSender:
    """Delivers due webhooks for one API process."""

    def __init__(self, services: ApiServices) -> None:
        self.services = services
        self.settings = services.settings

    async def run(self) -> None:
        """Tick every ``SFUMATO_WEBHOOK_POLL_S`` until cancelled (at shutdown)."""
        while True:
            try:
                sent = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: try again next tick
                log.warning("webhook tick failed: %s", exc)
                sent = 0
            if sent < CLAIM_BATCH:  # a full claim means more may be due: go on at once
                await asyncio.sleep(self.settings.webhook_poll_s)

    async def tick(self) -> int:
        """One sweep and one claim; returns how many deliveries were attempted."""
        webhooks = self.services.webhooks
        await run_in_threadpool(webhooks.sweep)
        job_ids = await run_in_threadpool(webhooks.claim, None, CLAIM_BATCH)
        await asyncio.gather(*(run_in_threadpool(self.deliver, job_id) for job_id in job_ids))
        return len(job_ids)

    def deliver(self, job_id: str) -> str:
        """Attempt one delivery (blocking); returns the resulting state."""
        webhooks, jobs = self.services.webhooks, self.services.jobs
        record = webhooks.record(job_id)
        if "url" not in record:
            webhooks.skip(job_id, "the webhook record expired")
            return _counted("skipped")
        try:
            job = jobs.get(job_id, record["tenant"])
        except JobNotFound:
            webhooks.skip(job_id, "the job no longer exists")
            return _counted("skipped")
        if job.status not in record.get("events", "").split(","):
            webhooks.skip(job_id, f"the job ended {job.status}, which webhook_events does not include")
            return _counted("skipped")
        base_url = f"http://{self.settings.api_host}:{self.settings.api_port}"
        view = render_job(job, self.services, base_url).model_copy(update={"webhook": None})
        msg_id = record["delivery_id"]
        body = json.dumps(
            {
                "id": msg_id,
                "type": f"image.{job.status}",
                "created_at": time.time(),
                "data": view.model_dump(mode="json"),
            },
            separators=(",", ":"),
        ).encode()
        status, error = self._send(record["url"], record["tenant"], msg_id, body)
        state = webhooks.attempted(job_id, status, error)
        log.info(
            "webhook delivery",
            extra={"event": "webhook_delivery", "job_id": job_id, "http_status": status, "state": state},
        )
        return _counted(state)

    def _send(self, url: str, tenant: str, msg_id: str, body: bytes) -> tuple[int | None, str | None]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **signed_headers(self.services.webhooks.secret(tenant), msg_id, int(time.time()), body),
        }
        try:
            result = fetch(url, method="POST", content=body, headers=headers, policy=self.services.webhooks.policy())
        except UnsafeUrl as exc:  # refused, unreachable, too slow: no answer
            return None, exc.message[:300]
        except ServiceError as exc:
            return None, exc.message[:300]
        return result.status_code, None if result.status_code < 300 else f"HTTP {result.status_code}"


def _counted(state: str) -> str:
    DELIVERIES.labels(state).inc()
    return state


@contextlib.asynccontextmanager
async def webhook_sender(services: ApiServices) -> AsyncIterator[WebhookSender]:
    """Run the sender for as long as the block lasts (the app's lifespan)."""
    sender = WebhookSender(services)
    task = asyncio.create_task(sender.run(), name="sfumato-webhooks")
    try:
        yield sender
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
