"""Turn a stored job into what clients see: states, timings, and short-lived image URLs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from api.resources import ApiServices
from core.jobs import JobRecord, redis_errors
from core.lora_tags import extract_lora_tags
from core.presence import live_workers
from core.progress import latest_progress, queue_position
from core.schemas import (
    BatchInfo,
    ErrorBody,
    ImageOut,
    JobParams,
    JobPayload,
    JobView,
    ProgressView,
    Timings,
    WebhookView,
)
from core.storage import LocalStore, S3Store
from core.text import encodable


@dataclass(frozen=True)
class JobExtras:
    """What a job view shows besides the RQ record: live progress, queue position, webhook."""

    progress: ProgressView | None = None
    queue_position: int | None = None
    webhook: WebhookView | None = None
    waiting_for: Literal["no_worker"] | None = None


def read_extras(services: ApiServices, record: JobRecord) -> JobExtras:
    """Read a job's extras from Redis (blocking; a few small reads)."""
    connection, settings = services.jobs.connection, services.settings
    job_id = record.payload.job_id
    with redis_errors():
        position: int | None = None
        waiting_for: Literal["no_worker"] | None = None
        if record.status == "queued":
            position = queue_position(connection, settings, record.payload.model, job_id, record.payload.priority)
            if live_workers(connection, settings, record.payload.model) == 0:
                waiting_for = "no_worker"  # queued with scale-from-zero: say so, never silently stuck
        progress = latest_progress(connection, settings, job_id) if record.status != "queued" else None
    return JobExtras(
        progress=progress, queue_position=position, webhook=services.webhooks.view(job_id), waiting_for=waiting_for
    )


def _absolute(url: str, base_url: str) -> str:
    """Local-store URLs are API paths; make them absolute for clients."""
    if url.startswith("/"):
        return base_url.rstrip("/") + url
    return url


def job_params(payload: JobPayload) -> JobParams:
    """What ``payload`` asked for, as a resubmittable request: the prompt as written, and only
    the LoRAs that its tags do not already name (the payload holds both, merged)."""
    written = payload.prompt if payload.prompt_as_written is None else payload.prompt_as_written
    # A tag of a stored prompt was valid when submitted, so reading it again cannot fail.
    tagged = {lora.name for lora in extract_lora_tags(written).loras} if payload.prompt_as_written else set()
    return JobParams(
        prompt=encodable(written),  # a job queued past the API may hold text JSON cannot carry
        negative_prompt=encodable(payload.negative_prompt),
        model=payload.model,
        width=payload.width,
        height=payload.height,
        steps=payload.steps,
        guidance_scale=payload.guidance_scale,
        scheduler=payload.scheduler,
        seed=payload.seed,
        n=payload.n,
        clip_skip=payload.clip_skip,
        loras=[lora for lora in payload.loras if lora.name not in tagged],
        strength=payload.strength,
        output_format=payload.output_format,
        refiner=payload.refiner,
    )


def job_view(
    record: JobRecord, store: LocalStore | S3Store, *, base_url: str, expiry_s: int, extras: JobExtras | None = None
) -> JobView:
    """The public view of ``record``. URLs are minted here, after the caller's ownership check."""
    payload = record.payload
    images: list[ImageOut] = []
    timings: Timings | None = None
    batch: BatchInfo | None = None
    if record.result is not None:
        timings, batch = record.result.timings, record.result.batch
        images = [
            ImageOut(
                index=img.index,
                url=_absolute(store.url(img.key, expiry_s), base_url),
                seed=img.seed,
                width=img.width,
                height=img.height,
                format=img.format,
            )
            for img in record.result.images
        ]
    return JobView(
        id=payload.job_id,
        status=record.status,
        model=payload.model,
        mode=payload.mode,
        n=payload.n,
        priority=payload.priority,
        created_at=payload.created_at,
        started_at=record.started_at,
        finished_at=record.ended_at if record.status in ("succeeded", "failed", "canceled") else None,
        images=images,
        timings=timings,
        batch=batch,
        error=ErrorBody(**record.error) if record.error else None,
        queue_position=extras.queue_position if extras else None,
        waiting_for=extras.waiting_for if extras else None,
        progress=extras.progress if extras else None,
        webhook=extras.webhook if extras else None,
        params=job_params(payload),
    )


def render_job(record: JobRecord, services: ApiServices, base_url: str) -> JobView:
    """The job as clients see it, with its live extras (blocking: reads Redis).

    ``base_url``: where clients reach the API (local-disk image URLs are made absolute with it).
    """
    settings = services.settings
    return job_view(
        record,
        services.store,
        base_url=settings.public_url or base_url,
        expiry_s=settings.url_expiry_s,
        extras=read_extras(services, record),
    )
