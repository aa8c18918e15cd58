"""The worker's endpoint and metric hooks, in-process on the tiny engine (the e2e tests read the
same metrics from a real worker process)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from rq import Queue
from rq.serializers import JSONSerializer

from core.storage import LocalStore
from tests.support.engine import payload
from tests.support.scrape import Scrape
from worker.pipelines.engine import Engine
from worker.runtime import metrics as worker_metrics
from worker.runtime.execute import generate_batch
from worker.runtime.health_server import HealthServer, WorkerCollector, WorkerProbe
from worker.runtime.runner import SfumatoWorker


@pytest.fixture
def endpoint() -> Iterator[tuple[str, WorkerProbe]]:
    registry = CollectorRegistry()
    probe = WorkerProbe("tiny")
    registry.register(WorkerCollector(probe))
    server = HealthServer("127.0.0.1", 0, probe, registry).start()
    try:
        yield f"http://127.0.0.1:{server.port}", probe
    finally:
        server.stop()


def test_healthz_is_ready_only_while_a_warmed_up_worker_serves(
    endpoint: tuple[str, WorkerProbe], engine: Engine, make_settings, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    base, probe = endpoint
    starting = httpx.get(f"{base}/healthz", timeout=5)
    assert starting.status_code == 503 and starting.json() == {"status": "not_ready", "state": "starting"}
    assert httpx.get(f"{base}/livez", timeout=5).status_code == 200
    scrape = Scrape.of(base)
    assert scrape.value("sfumato_worker_ready", model="tiny") == 0
    assert scrape.value("sfumato_worker_state", model="tiny", state="starting") == 1

    settings = make_settings(upload_stage_depth=0)
    queue = Queue("sfumato:tiny", connection=clean_redis, serializer=JSONSerializer)
    store = LocalStore(tmp_path / "images", b"k" * 32)
    worker = SfumatoWorker([queue], engine=engine, store=store, settings=settings, connection=clean_redis)
    probe.attach(worker)
    ready = httpx.get(f"{base}/healthz", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "state": "idle"}
    worker.set_state("busy")
    scrape = Scrape.of(base)
    assert scrape.value("sfumato_worker_state", model="tiny", state="busy") == 1
    assert scrape.value("sfumato_worker_state", model="tiny", state="idle") == 0
    assert scrape.value("sfumato_worker_info", model="tiny", device="cpu", dtype="float32", attention="sdpa") == 1
    assert scrape.has("sfumato_prompt_cache_hits_total", model="tiny")
    assert not scrape.has("sfumato_gpu_memory_allocated_bytes")  # CUDA only
    worker.draining = True
    draining = httpx.get(f"{base}/healthz", timeout=5)
    assert draining.status_code == 503 and draining.json()["state"] == "draining"
    assert Scrape.of(base).value("sfumato_worker_ready", model="tiny") == 0
    assert httpx.get(f"{base}/nope", timeout=5).status_code == 404


@pytest.fixture
def hooks(make_settings) -> Iterator[tuple[worker_metrics.Observability, CollectorRegistry]]:
    registry = CollectorRegistry()
    observability = worker_metrics.install(make_settings(max_batch=4), registry=registry, serve=False)
    try:
        yield observability, registry
    finally:
        worker_metrics.uninstall()


def test_a_batch_moves_the_generation_metrics(hooks, engine: Engine) -> None:
    _, registry = hooks

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"model": "tiny", **labels}) or 0.0

    jobs = [payload(job_id="a", steps=4, n=2), payload(job_id="b", steps=4, seed=9)]
    generated = generate_batch(engine, jobs)
    assert all(g.images is not None for g in generated)
    assert value("sfumato_batch_images_sum") == 3 and value("sfumato_batch_jobs_sum") == 2
    assert value("sfumato_batch_fill_ratio_sum") == pytest.approx(0.75)
    assert value("sfumato_images_generated_total", mode="txt2img") == 3
    assert value("sfumato_megapixel_steps_total", mode="txt2img") == pytest.approx(3 * 64 * 64 / 1e6 * 4)
    assert value("sfumato_job_inference_seconds_count", mode="txt2img") == 2
    assert value("sfumato_denoise_step_seconds_count", scheduler="ddim") == 3  # steps 2..4 of one call

    # img2img runs int(steps * strength) steps; a broken upload fails its own job, counted in
    # the batch but not as generated.
    img2img = payload(job_id="c", mode="img2img", steps=10, strength=0.5)
    broken = payload(job_id="d", mode="img2img", steps=10, strength=0.5, image_b64="aGVsbG8=")
    out = generate_batch(engine, [img2img, broken])
    assert out[0].images is not None and out[1].error is not None
    assert value("sfumato_images_generated_total", mode="img2img") == 1
    assert value("sfumato_megapixel_steps_total", mode="img2img") == pytest.approx(64 * 64 / 1e6 * 5)
    assert value("sfumato_batch_images_sum") == 5

    worker_metrics.set_recording(False)
    generate_batch(engine, jobs)
    assert value("sfumato_batch_images_sum") == 5, "recording off must record nothing"


def test_uploads_are_timed_and_failures_counted(hooks, tmp_path: Path) -> None:
    observability, registry = hooks
    root = tmp_path / "images"
    store = observability.store(LocalStore(root, b"k" * 32))
    store.put("t1/job/0.png", b"png", "image/png")
    root.joinpath("broken").write_text("a file where a tenant folder should be")
    with pytest.raises(OSError):
        store.put("broken/job/0.png", b"png", "image/png")
    assert registry.get_sample_value("sfumato_storage_upload_seconds_count", {"backend": "local"}) == 2
    assert (
        registry.get_sample_value("sfumato_storage_upload_errors_total", {"backend": "local", "code": "io_error"}) == 1
    )
    assert store.exists("t1/job/0.png")


def test_a_taken_port_stops_the_worker_before_the_model_loads(make_settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"127.0.0.1:{port}.*SFUMATO_WORKER_METRICS_PORT"):
            worker_metrics.install(make_settings(worker_metrics_port=port), registry=CollectorRegistry())
    assert worker_metrics.active() is None


def test_metrics_can_be_turned_off(make_settings) -> None:
    observability = worker_metrics.install(make_settings(metrics_enabled=False), CollectorRegistry(), serve=False)
    try:
        assert worker_metrics.active() is None and observability.server is None
        assert isinstance(worker_metrics.batch_observer([payload()]), worker_metrics._NoBatch)
    finally:
        worker_metrics.uninstall()
