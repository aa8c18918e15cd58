"""Run validated payloads on the engine and store their images: no queue logic here.

Two stages, so the runner can overlap them: :func:`generate_batch` (denoising, on the device)
and :func:`store_outputs` (PNG encoding and upload, on the CPU). Both are "list in, list out,
same length": a failure is reported per job, and each job is completed on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from diffusers.image_processor import VaeImageProcessor

from core.errors import ErrorDict, GenerationFailed, OutOfMemory, ServiceError, StorageUnavailable
from core.schemas import BatchInfo, JobPayload, JobResult, StoredImage, Timings
from core.storage import CONTENT_TYPES, ObjectStore, image_key
from worker.pipelines.engine import Engine
from worker.pipelines.types import PreparedJob, StepCallback
from worker.runtime.encoding import encode_image
from worker.runtime.metrics import batch_observer

log = logging.getLogger("sfumato.worker")


@dataclass(frozen=True)
class JobOutcome:
    """Either a result (succeeded) or an error (failed) for one payload."""

    payload: JobPayload
    result: JobResult | None = None
    error: ErrorDict | None = None


@dataclass(frozen=True)
class Generated:
    """One job's float images in [0, 1] ``(n, H, W, 3)``, or why it has none."""

    payload: JobPayload
    images: np.ndarray | None
    error: ErrorDict | None
    inference_s: float


def error_of(exc: BaseException) -> ErrorDict:
    if isinstance(exc, ServiceError):
        return exc.to_dict()
    return GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}"[:500]).to_dict()


def _split_images(job: PreparedJob) -> list[PreparedJob]:
    """One single-image job per image: image i of seed s is exactly the image of seed s+i."""
    return [
        PreparedJob(job.payload.model_copy(update={"seed": seed, "n": 1}), job.image, job.mask, job.control)
        for seed in job.payload.seeds
    ]


def run_splitting_on_oom(
    engine: Engine, jobs: Sequence[PreparedJob], on_step: StepCallback | None = None
) -> list[np.ndarray | ErrorDict]:
    """``engine.run``, halving the batch on out-of-memory until it fits.

    A job whose single image still does not fit fails alone (``out_of_memory``); its partners
    still run. Other errors fail every job of the call that raised.
    """
    try:
        return list(engine.run(jobs, on_step))
    except OutOfMemory:
        pass  # retried below, once this exception and whatever its frames hold are gone
    if len(jobs) > 1:
        half = len(jobs) // 2
        log.warning("out of memory for %d jobs; retrying as %d + %d", len(jobs), half, len(jobs) - half)
        return run_splitting_on_oom(engine, jobs[:half], on_step) + run_splitting_on_oom(engine, jobs[half:], on_step)
    (job,) = jobs
    if job.payload.n == 1:
        log.error("job %s does not fit in device memory even alone", job.payload.job_id)
        return [OutOfMemory(f"one {job.payload.width}x{job.payload.height} image does not fit in memory").to_dict()]
    parts = run_splitting_on_oom(engine, _split_images(job), on_step)
    errors = [part for part in parts if isinstance(part, dict)]
    if errors:
        return [errors[0]]
    return [np.concatenate([part for part in parts if isinstance(part, np.ndarray)], axis=0)]


def generate_batch(
    engine: Engine, payloads: Sequence[JobPayload], on_step: StepCallback | None = None
) -> list[Generated]:
    """Prepare each job (a broken upload fails only its job), then denoise the rest together."""
    prepared: list[PreparedJob] = []
    errors: dict[str, ErrorDict] = {}
    for payload in payloads:
        try:
            prepared.append(engine.prepare(payload))
        except Exception as exc:
            errors[payload.job_id] = error_of(exc)
    observer = batch_observer(payloads)  # metrics and the batch's log line (worker/runtime/metrics.py)
    started = time.monotonic()
    outputs: dict[str, np.ndarray | ErrorDict] = {}
    if prepared:
        try:
            results = run_splitting_on_oom(engine, prepared, observer.steps(on_step))
        except Exception as exc:
            log.exception("generation failed for %d job(s)", len(prepared))
            results = [error_of(exc)] * len(prepared)
        outputs = {job.payload.job_id: out for job, out in zip(prepared, results, strict=True)}
    inference_s = time.monotonic() - started
    generated = []
    for payload in payloads:
        out = outputs.get(payload.job_id, errors.get(payload.job_id))
        if isinstance(out, np.ndarray):
            generated.append(Generated(payload, out, None, inference_s))
        else:
            generated.append(Generated(payload, None, out, inference_s))
    observer.done(generated, inference_s)
    return generated


def put_with_retry(store: ObjectStore, key: str, data: bytes, content_type: str, budget_s: float) -> None:
    """Upload with exponential backoff (0.2 s doubling to 5 s) for up to ``budget_s``; then
    :class:`StorageUnavailable`. A job is never reported succeeded without its objects."""
    deadline = time.monotonic() + budget_s
    delay = 0.2
    while True:
        try:
            store.put(key, data, content_type)
            return
        except Exception as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageUnavailable(f"could not store {key} for {budget_s:.0f} s: {exc}"[:500]) from exc
            log.warning("upload of %s failed (%s); retrying in %.1f s", key, exc, min(delay, remaining))
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0)


def store_outputs(
    store: ObjectStore,
    generated: Generated,
    model_name: str,
    started_at: float,
    batch: BatchInfo | None = None,
    retry_budget_s: float = 0.0,
) -> JobOutcome:
    """Encode and upload one job's images under retry-stable keys; its outcome with timings."""
    payload = generated.payload
    if generated.images is None:
        return JobOutcome(payload=payload, error=generated.error)
    t0 = time.monotonic()
    ext = payload.output_format
    stored: list[StoredImage] = []
    try:
        pil_images = VaeImageProcessor.numpy_to_pil(generated.images)
        for index, (image, seed) in enumerate(zip(pil_images, payload.seeds, strict=True)):
            data = encode_image(image, payload, index=index, seed=seed, model_name=model_name)
            key = image_key(payload.tenant, payload.job_id, index, ext)
            put_with_retry(store, key, data, CONTENT_TYPES[ext], retry_budget_s)
            stored.append(
                StoredImage(key=key, index=index, seed=seed, width=payload.width, height=payload.height, format=ext)
            )
    except Exception as exc:
        log.exception("storing images of job %s failed", payload.job_id)
        return JobOutcome(payload=payload, error=error_of(exc))
    timings = Timings(
        queue_wait_s=round(max(0.0, started_at - payload.created_at), 4),
        inference_s=round(generated.inference_s, 4),
        upload_s=round(time.monotonic() - t0, 4),
        total_s=round(max(0.0, time.time() - payload.created_at), 4),
    )
    return JobOutcome(payload=payload, result=JobResult(images=stored, timings=timings, batch=batch))


def run_jobs(engine: Engine, store: ObjectStore, payloads: Sequence[JobPayload], started_at: float) -> list[JobOutcome]:
    """Both stages inline: generate ``payloads`` as one batch, then store each job's images."""
    return [store_outputs(store, g, engine.spec.id, started_at) for g in generate_batch(engine, payloads)]
