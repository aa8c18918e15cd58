"""Turn a stored job into what clients see: states, timings, and short-lived image URLs."""

from __future__ import annotations

from core.jobs import JobRecord
from core.schemas import BatchInfo, ErrorBody, ImageOut, JobView, Timings
from core.storage import LocalStore, S3Store


def _absolute(url: str, base_url: str) -> str:
    """Local-store URLs are API paths; make them absolute for clients."""
    if url.startswith("/"):
        return base_url.rstrip("/") + url
    return url


def job_view(record: JobRecord, store: LocalStore | S3Store, *, base_url: str, expiry_s: int) -> JobView:
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
        created_at=payload.created_at,
        started_at=record.started_at,
        finished_at=record.ended_at if record.status in ("succeeded", "failed", "canceled") else None,
        images=images,
        timings=timings,
        batch=batch,
        error=ErrorBody(**record.error) if record.error else None,
    )
