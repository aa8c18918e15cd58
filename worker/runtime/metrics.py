"""The worker's metrics and job-event logs, recorded through a few one-line hooks.

``worker/__main__.py`` calls :func:`install` once (which also starts the worker's HTTP endpoint,
``worker/runtime/health_server.py``), times model loading and warm-up with :meth:`Observability.phase`,
wraps the object store with :meth:`Observability.store` and hands each RQ worker to
:meth:`Observability.attach`. The rest are hooks that do nothing until :func:`install` ran:

- :func:`batch_observer` in ``execute.generate_batch``: batch size and fill, inference time per
  job, time per denoising step, images and megapixel-steps, and one log line per batch;
- :func:`batch_isolated` and :func:`job_failed_alone` in ``execute.run_splitting``: batches
  re-run in halves after a failure that may be one job's input, and the jobs that failed alone;
- :func:`batch_preempted` in the runner: batches stopped for a queued interactive job;
- :func:`job_ended` in the runner: jobs finished by state and error code, time in queue,
  end-to-end latency, and one log line per job with its ``job_id`` and ``request_id``.

The compiled fast path's figures (worker/pipelines/fast_path.py) are read at scrape time by
:class:`CompileCollector` from the attached worker's engine: compile seconds, graphs, recompiles
after warm-up and calls at shapes warm-up did not compile.

Label values are bounded: model, mode, scheduler, state, error code, storage backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from rq.job import Job

from core.config import Settings
from core.errors import ErrorDict, ServiceError
from core.jobs import META_REQUEST_ID
from core.metrics import JOB_BUCKETS, bounded_code, record_finished
from core.models import worker_model
from core.priority import priority_of_queue
from core.schemas import JobPayload
from core.storage import ObjectStore
from worker.pipelines.types import StepCallback
from worker.runtime.health_server import HealthServer, WorkerCollector, WorkerProbe

log = logging.getLogger("sfumato.worker")

STEP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
IMAGE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
FILL_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


class Instruments:
    """The worker's metric objects, registered once on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def histogram(name: str, doc: str, labels: list[str], buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        self.batch_images = histogram("sfumato_batch_images", "Images per pipeline call.", ["model"], IMAGE_BUCKETS)
        self.batch_jobs = histogram("sfumato_batch_jobs", "Jobs per pipeline call.", ["model"], IMAGE_BUCKETS)
        self.batch_fill = histogram(
            "sfumato_batch_fill_ratio", "Images per pipeline call / SFUMATO_MAX_BATCH.", ["model"], FILL_BUCKETS
        )
        self.inference = histogram(
            "sfumato_job_inference_seconds",
            "Seconds a job spent in its batch's pipeline call (denoising and VAE decode).",
            ["model", "mode"],
            JOB_BUCKETS,
        )
        self.step = histogram(
            "sfumato_denoise_step_seconds",
            "Seconds per denoising step of a batch.",
            ["model", "scheduler"],
            STEP_BUCKETS,
        )
        self.queue_wait = histogram(
            "sfumato_job_queue_wait_seconds",
            "Seconds from submission until a worker started the job, by priority class.",
            ["model", "priority"],
            JOB_BUCKETS,
        )
        self.latency = histogram(
            "sfumato_job_latency_seconds",
            "Seconds from submission until the job ended.",
            ["model", "state"],
            JOB_BUCKETS,
        )
        self.images = Counter(
            "sfumato_images_generated_total", "Images generated.", ["model", "mode"], registry=registry
        )
        self.mpx_steps = Counter(
            "sfumato_megapixel_steps_total",
            "Work done: megapixels x denoising steps run, summed over images.",
            ["model", "mode"],
            registry=registry,
        )
        self.upload = histogram(
            "sfumato_storage_upload_seconds",
            "Seconds per image upload attempt.",
            ["backend"],
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.upload_errors = Counter(
            "sfumato_storage_upload_errors_total",
            "Failed image upload attempts.",
            ["backend", "code"],
            registry=registry,
        )
        self.isolations = Counter(
            "sfumato_batch_isolations_total",
            "Batches that failed for a reason that may be one job's input and were re-run in halves, so that "
            "only the job(s) failing alone fail.",
            ["model"],
            registry=registry,
        )
        self.failed_alone = Counter(
            "sfumato_jobs_failed_alone_total",
            "Jobs that failed when run alone after their batch was isolated (their partners ran without them).",
            ["model"],
            registry=registry,
        )
        self.preemptions = Counter(
            "sfumato_batch_preemptions_total",
            "Batches of lower-class jobs stopped at a denoising step for a queued interactive job; their jobs "
            "went back to the head of their queues (SFUMATO_PREEMPT).",
            ["model"],
            registry=registry,
        )
        self.load = Gauge("sfumato_model_load_seconds", "Seconds the model took to load.", ["model"], registry=registry)
        self.warmup = Gauge(
            "sfumato_model_warmup_seconds", "Seconds the warm-up generation took.", ["model"], registry=registry
        )


class CompileCollector:
    """Scrape-time metrics of the compiled fast path of the attached worker's engine; nothing
    while no worker is attached or SFUMATO_COMPILE is off."""

    def __init__(self, probe: WorkerProbe) -> None:
        self.probe = probe

    def collect(self) -> Iterable[Metric]:
        engine = getattr(self.probe.worker, "engine", None)
        path = getattr(engine, "fast_path", None)
        if path is None:
            return
        model, stats = self.probe.model_id, path.stats
        for family, name, doc, value in (
            (GaugeMetricFamily, "sfumato_compile_seconds",
             "Seconds spent compiling the UNet and VAE decoder (warm-up and later).", stats.compile_seconds),
            (GaugeMetricFamily, "sfumato_compiled_graphs", "Graphs compiled for the fast path.", stats.graphs),
            (CounterMetricFamily, "sfumato_compile_recompiles",
             "Compilations after warm-up (a new shape or a failed guard); should stay near 0.", stats.recompiles),
            (CounterMetricFamily, "sfumato_compile_unwarmed_shapes",
             "Pipeline calls at an input shape warm-up did not compile (compiled once, on first use).",
             stats.unwarmed),
        ):  # fmt: skip
            metric = family(name, doc, labels=["model"])
            metric.add_metric([model], float(value))
            yield metric


@dataclass
class Observability:
    """What :func:`install` set up for this process."""

    settings: Settings
    model_id: str
    instruments: Instruments
    probe: WorkerProbe
    registry: CollectorRegistry
    collector: WorkerCollector
    server: HealthServer | None = None
    compile_collector: CompileCollector | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time model ``load`` or ``warmup`` into its gauge."""
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        gauge = self.instruments.load if name == "load" else self.instruments.warmup
        gauge.labels(self.model_id).set(seconds)
        log.info("model %s: %s took %.2fs", self.model_id, name, seconds, extra={"event": f"model_{name}"})

    def store(self, store: ObjectStore) -> ObjectStore:
        """``store`` with its uploads timed and failures counted."""
        return InstrumentedStore(store, self.instruments)

    def attach(self, worker: Any) -> None:
        """The RQ worker now serving (the model is loaded and warmed up): ready from here on."""
        self.probe.attach(worker)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


_installed: Observability | None = None
#: The installed Observability while its hooks are on; what every hook reads first.
_active: Observability | None = None
_by_registry: dict[int, Instruments] = {}


def install(settings: Settings, registry: CollectorRegistry = REGISTRY, serve: bool = True) -> Observability:
    """Set up this process's metrics and start the worker's endpoint (``serve`` and a non-zero
    ``SFUMATO_WORKER_METRICS_PORT``); the hooks record from now on unless
    ``SFUMATO_METRICS_ENABLED=false``. A port that is taken stops start-up here, before the
    model loads, with an error that names it. Idempotent."""
    global _installed
    if _installed is not None:
        return _installed
    model_id = worker_model(settings).id
    probe = WorkerProbe(model_id)
    server = None
    if serve and settings.worker_metrics_port:
        try:
            server = HealthServer(settings.worker_metrics_host, settings.worker_metrics_port, probe, registry)
        except OSError as exc:
            where = f"{settings.worker_metrics_host}:{settings.worker_metrics_port}"
            raise SystemExit(
                f"cannot serve worker metrics on {where} ({exc}); set SFUMATO_WORKER_METRICS_PORT"
            ) from exc
    if id(registry) not in _by_registry:
        _by_registry[id(registry)] = Instruments(registry)
    collector = WorkerCollector(probe)
    registry.register(collector)
    compile_collector = CompileCollector(probe)
    registry.register(compile_collector)
    observability = Observability(settings, model_id, _by_registry[id(registry)], probe, registry, collector)
    observability.compile_collector = compile_collector
    if server is not None:
        observability.server = server.start()
        log.info("worker metrics and health on http://%s:%d/metrics", settings.worker_metrics_host, server.port)
    _installed = observability
    set_recording(settings.metrics_enabled)
    return observability


def set_recording(on: bool) -> None:
    """Turn the hooks on or off (benchmarks compare both; SFUMATO_METRICS_ENABLED=false)."""
    global _active
    _active = _installed if on else None


def uninstall() -> None:
    """Undo :func:`install`: hooks off, endpoint stopped, scrape-time collector removed (tests)."""
    global _installed, _active
    if _installed is not None:
        _installed.close()
        _installed.registry.unregister(_installed.collector)
        if _installed.compile_collector is not None:
            _installed.registry.unregister(_installed.compile_collector)
    _installed = _active = None


def active() -> Observability | None:
    return _active


# --- hooks -------------------------------------------------------------------------------


def _effective_steps(payload: JobPayload) -> int:
    """Denoising steps an image of ``payload`` really runs (img2img skips the first ones)."""
    if payload.mode == "txt2img" or payload.strength is None:
        return payload.steps
    return max(1, int(payload.steps * payload.strength))


class _NoBatch:
    """What :func:`batch_observer` returns when metrics are off: costs one call per batch."""

    def steps(self, on_step: StepCallback | None) -> StepCallback | None:
        return on_step

    def done(self, generated: Sequence[Any], inference_s: float) -> None:
        return None


_NO_BATCH = _NoBatch()


class BatchObserver:
    """Observes one pipeline call: its steps while it runs, its outcome when it is done."""

    def __init__(self, obs: Observability, payloads: Sequence[JobPayload]) -> None:
        self.obs = obs
        self.payloads = payloads
        first = payloads[0]
        self._step = obs.instruments.step.labels(first.model, first.scheduler)
        self._last: float | None = None
        self._inner: StepCallback | None = None

    def steps(self, on_step: StepCallback | None) -> StepCallback:
        self._inner = on_step
        return self._on_step

    def _on_step(self, done: int, total: int) -> None:
        now = time.perf_counter()
        # The first step also pays for prompt encoding and latents: time steps 2..n only. A
        # batch split after an out-of-memory starts again at step 1.
        if done > 1 and self._last is not None:
            self._step.observe(now - self._last)
        self._last = now
        if self._inner is not None:
            self._inner(done, total)

    def done(self, generated: Sequence[Any], inference_s: float) -> None:
        ins, settings = self.obs.instruments, self.obs.settings
        model = self.payloads[0].model
        images = sum(p.n for p in self.payloads)
        ins.batch_images.labels(model).observe(images)
        ins.batch_jobs.labels(model).observe(len(self.payloads))
        ins.batch_fill.labels(model).observe(min(1.0, images / settings.max_batch))
        for gen in generated:
            payload = gen.payload
            if gen.images is None:
                continue
            ins.inference.labels(model, payload.mode).observe(inference_s)
            ins.images.labels(model, payload.mode).inc(payload.n)
            megapixels = payload.width * payload.height / 1e6
            ins.mpx_steps.labels(model, payload.mode).inc(megapixels * _effective_steps(payload) * payload.n)
        log.info(
            "batch generated: %d job(s), %d image(s) in %.3fs",
            len(self.payloads),
            images,
            inference_s,
            extra={
                "event": "batch_generated",
                "job_ids": [p.job_id for p in self.payloads],
                "images": images,
                "inference_s": round(inference_s, 4),
            },
        )


def batch_observer(payloads: Sequence[JobPayload]) -> BatchObserver | _NoBatch:
    """The observer of one pipeline call over ``payloads`` (a no-op when metrics are off)."""
    obs = _active
    if obs is None or not payloads:
        return _NO_BATCH
    return BatchObserver(obs, payloads)


def batch_isolated(first: JobPayload) -> None:
    """A batch of ``first``'s model failed and is re-run in halves (worker/runtime/execute.py)."""
    obs = _active
    if obs is not None:
        obs.instruments.isolations.labels(first.model).inc()


def job_failed_alone(payload: JobPayload) -> None:
    """Isolation found ``payload``'s job failing on its own; its partners ran without it."""
    obs = _active
    if obs is not None:
        obs.instruments.failed_alone.labels(payload.model).inc()


def batch_preempted(model: str) -> None:
    """A running batch of ``model`` was stopped for an interactive job (worker/runtime/runner.py)."""
    obs = _active
    if obs is not None:
        obs.instruments.preemptions.labels(model).inc()


def job_ended(job: Job, model: str, state: str, error: ErrorDict | None = None) -> None:
    """A started job reached ``state`` (succeeded, failed, canceled): count it and log it."""
    obs = _active
    if obs is None:
        return
    code = bounded_code(error["code"]) if error else None
    priority = priority_of_queue(job.origin)
    record_finished(model, state, code, priority)
    created = _created_at(job)
    now = time.time()
    fields: dict[str, Any] = {"event": "job_ended", "job_id": job.id, "request_id": job.meta.get(META_REQUEST_ID)}
    fields.update(state=state, code=code)
    if created is not None:
        obs.instruments.latency.labels(model, state).observe(max(0.0, now - created))
        if job.started_at is not None:
            wait = max(0.0, job.started_at.timestamp() - created)
            obs.instruments.queue_wait.labels(model, priority).observe(wait)
            fields["queue_wait_s"] = round(wait, 4)
        fields["total_s"] = round(max(0.0, now - created), 4)
    level = logging.WARNING if state == "failed" else logging.INFO
    log.log(level, "job %s %s%s", job.id, state, f" ({code})" if code else "", extra=fields)


def _created_at(job: Job) -> float | None:
    """The payload's submission time, read without validating the whole payload."""
    try:
        return float(job.args[0]["created_at"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def _upload_error_code(exc: Exception) -> str:
    """A bounded label for a failed upload: the store's error code, ``io_error`` (local disk)."""
    if isinstance(exc, ServiceError):
        return bounded_code(exc.code)
    return "io_error" if isinstance(exc, OSError) else "other"


class InstrumentedStore:
    """An :class:`~core.storage.ObjectStore` whose ``put`` is timed and whose failures are counted."""

    def __init__(self, inner: ObjectStore, instruments: Instruments) -> None:
        self.inner = inner
        self.backend = "s3" if type(inner).__name__ == "S3Store" else "local"
        self._seconds = instruments.upload.labels(self.backend)
        self._errors = instruments.upload_errors

    def put(self, key: str, data: bytes, content_type: str) -> None:
        started = time.perf_counter()
        try:
            self.inner.put(key, data, content_type)
        except Exception as exc:
            self._errors.labels(self.backend, _upload_error_code(exc)).inc()
            raise
        finally:
            self._seconds.observe(time.perf_counter() - started)

    def url(self, key: str, expires_s: int) -> str:
        return self.inner.url(key, expires_s)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
