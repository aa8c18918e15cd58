"""Run validated payloads on the engine and store their images: no queue logic here.

Two stages, so the runner can overlap them: :func:`generate_batch` (denoising, on the device)
and :func:`store_outputs` (PNG encoding and upload, on the CPU). Both are "list in, list out,
same length": a failure is reported per job, and each job is completed on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from diffusers.image_processor import VaeImageProcessor
from rq.timeouts import BaseTimeoutException

from core.errors import (
    MODEL_FAILED_MESSAGE,
    ErrorDict,
    GenerationFailed,
    ModelUnavailable,
    OutOfMemory,
    QueueUnavailable,
    ServiceError,
    StorageUnavailable,
)
from core.schemas import BatchInfo, JobPayload, JobResult, StoredImage, Timings
from core.storage import CONTENT_TYPES, ObjectStore, image_key
from worker.pipelines.engine import Engine
from worker.pipelines.types import PreparedJob, StepCallback
from worker.runtime.encoding import Provenance, encode_image
from worker.runtime.metrics import batch_isolated, batch_observer, job_failed_alone
from worker.runtime.provenance import provenance_of

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
    #: The files behind the images (model, LoRA and refiner hashes) for the infotext.
    provenance: Provenance | None = None


def error_of(exc: BaseException) -> ErrorDict:
    """The client-facing error of ``exc``: our own errors as they are, anything else generic."""
    if isinstance(exc, ServiceError):
        return exc.to_dict()
    return GenerationFailed(MODEL_FAILED_MESSAGE).to_dict()


#: Failures that say nothing about one job's input: memory (split instead), the model or the
#: infrastructure (Redis, storage). Re-running jobs alone would only fail them again, slower.
_NOT_ONE_JOBS_FAULT: tuple[type[BaseException], ...] = (
    OutOfMemory,
    ModelUnavailable,
    QueueUnavailable,
    StorageUnavailable,
    BaseTimeoutException,
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def may_be_one_jobs_fault(exc: BaseException, callback_error: BaseException | None = None) -> bool:
    """Whether a failed batch is worth re-running in parts: not a failure of memory, the model
    or the infrastructure, not a job timeout, and not what the caller's step callback raised
    (cancellation: the runner's decision, never a job's fault)."""
    return not any(isinstance(link, _NOT_ONE_JOBS_FAULT) or link is callback_error for link in _chain(exc))


def _split_images(job: PreparedJob) -> list[PreparedJob]:
    """One single-image job per image: image i of seed s is exactly the image of seed s+i."""
    return [
        PreparedJob(job.payload.model_copy(update={"seed": seed, "n": 1}), job.image, job.mask, job.control)
        for seed in job.payload.seeds
    ]


class _CallbackGuard:
    """Wraps the caller's step callback and remembers what it raised, so a cancellation is told
    apart from a job's fault even when the pipeline wraps it."""

    def __init__(self, on_step: StepCallback | None) -> None:
        self.on_step = on_step
        self.error: BaseException | None = None
        #: Set once a part of several jobs failed and is being bisected (counted once per batch).
        self.isolating = False

    def __call__(self, done: int, total: int) -> None:
        if self.on_step is None:
            return
        try:
            self.on_step(done, total)
        except BaseException as exc:
            self.error = exc
            raise

    def callback(self) -> StepCallback | None:
        return None if self.on_step is None else self


def run_splitting(
    engine: Engine, jobs: Sequence[PreparedJob], on_step: StepCallback | None = None, *, isolate: bool = True
) -> list[np.ndarray | ErrorDict]:
    """``engine.run``, in parts when the whole batch cannot run.

    - Out of memory: halve the batch until it fits. A job whose single image still does not fit
      fails alone (``out_of_memory``); its partners still run.
    - Any other failure that may be one job's fault (``isolate``, see
      :func:`may_be_one_jobs_fault`): bisect, so only a job that fails when run alone fails,
      with its own error, and the others get the images they would have had alone (each image
      has its own generator). Counted in ``sfumato_batch_isolations_total``.

    Whatever else is raised (the step callback's cancellation, a timeout, Redis or storage
    down, the model unavailable) propagates and fails the whole call, as one failure.
    """
    guard = _CallbackGuard(on_step)
    return _run_parts(engine, jobs, guard, isolate, depth=0)


def _run_parts(
    engine: Engine, jobs: Sequence[PreparedJob], guard: _CallbackGuard, isolate: bool, depth: int
) -> list[np.ndarray | ErrorDict]:
    failure: ErrorDict | None = None
    try:
        return list(engine.run(jobs, guard.callback()))
    except OutOfMemory:
        pass  # retried below, once this exception and whatever its frames hold are gone
    except Exception as exc:
        if not (isolate and may_be_one_jobs_fault(exc, guard.error)):
            raise
        # Logged here with its traceback; only the client-facing error outlives this block (the
        # traceback's frames hold the failed call's activations, see the out-of-memory case).
        failure = error_of(exc)
        ids = [job.payload.job_id for job in jobs]
        if len(jobs) == 1:
            log.error(
                "job %s failed%s", ids[0], " alone, isolated from its batch" if depth else "", exc_info=exc,
                extra={"event": "job_generation_failed", "job_id": ids[0], "isolated": depth > 0},
            )  # fmt: skip
        else:
            log.warning(
                "batch of %d job(s) failed; re-running it in halves to find the job(s) at fault", len(jobs),
                exc_info=exc, extra={"event": "batch_isolation", "job_ids": ids},
            )  # fmt: skip
    if failure is not None:
        if len(jobs) == 1:
            if depth:  # its partners ran without it (after a bisection or an out-of-memory split)
                job_failed_alone(jobs[0].payload)
            return [failure]
        if not guard.isolating:
            guard.isolating = True
            batch_isolated(jobs[0].payload)
        return _halves(engine, jobs, guard, isolate, depth)
    if len(jobs) > 1:
        log.warning(
            "out of memory for %d jobs; retrying as %d + %d", len(jobs), len(jobs) // 2, len(jobs) - len(jobs) // 2
        )
        return _halves(engine, jobs, guard, isolate, depth)
    (job,) = jobs
    if job.payload.n == 1:
        log.error("job %s does not fit in device memory even alone", job.payload.job_id)
        return [OutOfMemory(f"one {job.payload.width}x{job.payload.height} image does not fit in memory").to_dict()]
    parts = _run_parts(engine, _split_images(job), guard, isolate, depth)
    errors = [part for part in parts if isinstance(part, dict)]
    if errors:
        return [errors[0]]
    return [np.concatenate([part for part in parts if isinstance(part, np.ndarray)], axis=0)]


def _halves(
    engine: Engine, jobs: Sequence[PreparedJob], guard: _CallbackGuard, isolate: bool, depth: int
) -> list[np.ndarray | ErrorDict]:
    half = len(jobs) // 2
    return _run_parts(engine, jobs[:half], guard, isolate, depth + 1) + _run_parts(
        engine, jobs[half:], guard, isolate, depth + 1
    )


def run_splitting_on_oom(
    engine: Engine, jobs: Sequence[PreparedJob], on_step: StepCallback | None = None
) -> list[np.ndarray | ErrorDict]:
    """:func:`run_splitting` without isolation: only out-of-memory splits the batch."""
    return run_splitting(engine, jobs, on_step, isolate=False)


def generate_batch(
    engine: Engine, payloads: Sequence[JobPayload], on_step: StepCallback | None = None, *, isolate: bool = True
) -> list[Generated]:
    """Prepare each job (a broken upload fails only its job), then denoise the rest together;
    a failure that may be one job's fault is isolated (:func:`run_splitting`) unless ``isolate``
    is off (SFUMATO_BATCH_ISOLATION=false)."""
    prepared: list[PreparedJob] = []
    errors: dict[str, ErrorDict] = {}
    for payload in payloads:
        try:
            prepared.append(engine.prepare(payload))
        except Exception as exc:
            if not isinstance(exc, ServiceError):
                log.exception("preparing job %s failed", payload.job_id, extra={"job_id": payload.job_id})
            errors[payload.job_id] = error_of(exc)
    observer = batch_observer(payloads)  # metrics and the batch's log line (worker/runtime/metrics.py)
    started = time.monotonic()
    outputs: dict[str, np.ndarray | ErrorDict] = {}
    if prepared:
        try:
            results = run_splitting(engine, prepared, observer.steps(on_step), isolate=isolate)
        except Exception as exc:
            ids = [job.payload.job_id for job in prepared]
            log.exception("generation failed for %d job(s)", len(prepared), extra={"job_ids": ids})
            results = [error_of(exc)] * len(prepared)
        outputs = {job.payload.job_id: out for job, out in zip(prepared, results, strict=True)}
    inference_s = time.monotonic() - started
    generated = []
    for payload in payloads:
        out = outputs.get(payload.job_id, errors.get(payload.job_id))
        if isinstance(out, np.ndarray):
            generated.append(Generated(payload, out, None, inference_s, provenance_of(engine, payload)))
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
                # The store's own error (an exception class, an endpoint address) stays in the log.
                log.error("upload of %s failed for %.0f s: %s", key, budget_s, exc)
                raise StorageUnavailable(
                    f"the object store did not accept {key} for {budget_s:.0f} s; retry the request later"
                ) from exc
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
            data = encode_image(image, payload, index, seed, model_name, generated.provenance)
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
