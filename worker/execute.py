"""Run validated payloads on the engine and store their images: no queue logic here.

``run_jobs`` is "list in, list out, same length": one :class:`JobOutcome` per payload, so a
failure is reported per job and the caller completes each job on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import ErrorDict, GenerationFailed, SfumatoError
from core.schemas import JobPayload, JobResult, StoredImage, Timings
from core.storage import CONTENT_TYPES, ObjectStore, image_key
from worker.encoding import encode_image
from worker.engine import Engine

log = logging.getLogger("sfumato.worker")


@dataclass(frozen=True)
class JobOutcome:
    """Either a result (succeeded) or an error (failed) for one payload."""

    payload: JobPayload
    result: JobResult | None = None
    error: ErrorDict | None = None


def _error_of(exc: BaseException) -> ErrorDict:
    if isinstance(exc, SfumatoError):
        return exc.to_dict()
    return GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}"[:500]).to_dict()


def _store_images(
    store: ObjectStore, payload: JobPayload, images: Sequence[object], model_name: str
) -> list[StoredImage]:
    stored: list[StoredImage] = []
    ext = payload.output_format
    for index, (image, seed) in enumerate(zip(images, payload.seeds, strict=True)):
        data = encode_image(image, payload, index=index, seed=seed, model_name=model_name)  # type: ignore[arg-type]
        key = image_key(payload.tenant, payload.job_id, index, ext)
        store.put(key, data, CONTENT_TYPES[ext])
        stored.append(
            StoredImage(key=key, index=index, seed=seed, width=payload.width, height=payload.height, format=ext)
        )
    return stored


def run_jobs(engine: Engine, store: ObjectStore, payloads: Sequence[JobPayload], started_at: float) -> list[JobOutcome]:
    """Generate all ``payloads`` in one engine call (they share a batch key), then store each job's
    images. A failure of the shared call fails every job in it; an upload failure fails only its job.
    """
    t0 = time.monotonic()
    try:
        batches = engine.generate(payloads)
    except Exception as exc:
        log.exception("generation failed for %d job(s)", len(payloads))
        return [JobOutcome(payload=p, error=_error_of(exc)) for p in payloads]
    inference_s = time.monotonic() - t0
    outcomes: list[JobOutcome] = []
    for payload, images in zip(payloads, batches, strict=True):
        t_upload = time.monotonic()
        try:
            stored = _store_images(store, payload, images, engine.spec.id)
        except Exception as exc:
            log.exception("storing images of job %s failed", payload.job_id)
            outcomes.append(JobOutcome(payload=payload, error=_error_of(exc)))
            continue
        now = time.time()
        timings = Timings(
            queue_wait_s=round(max(0.0, started_at - payload.created_at), 4),
            inference_s=round(inference_s, 4),
            upload_s=round(time.monotonic() - t_upload, 4),
            total_s=round(max(0.0, now - payload.created_at), 4),
        )
        outcomes.append(JobOutcome(payload=payload, result=JobResult(images=stored, timings=timings)))
    return outcomes
