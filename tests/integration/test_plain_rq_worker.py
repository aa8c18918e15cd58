"""The function recorded on the queue (``core.jobs.GENERATE_FUNC``) is the real entry point: a
plain RQ ``SimpleWorker`` (no batching, no Sfumato runner) runs a queued job to the same images
the engine makes, and a failing job ends ``failed`` with our error code, not retried."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from core.config import Settings, get_settings
from core.jobs import GENERATE_FUNC, JobStore, connect, new_job_id
from core.schemas import JobPayload
from core.storage import LocalStore, build_store
from tests.conftest import SettingsFactory
from tests.support.env import settings_env
from worker.pipelines.engine import Engine
from worker.runtime import tasks
from worker.runtime.execute import generate_batch


@pytest.fixture
def settings(
    make_settings: SettingsFactory, clean_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Settings]:
    settings = make_settings(model="tiny", device="cpu", dtype="float32", attention="sdpa", storage="local")
    for name, value in settings_env(settings, base={}).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    tasks.resident.cache_clear()
    yield settings
    tasks.resident.cache_clear()


def _payload(**changes: Any) -> JobPayload:
    fields: dict[str, Any] = {
        "job_id": new_job_id(),
        "tenant": "acme",
        "model": "tiny",
        "mode": "txt2img",
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 3,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "seed": 99,
        "n": 2,
        "clip_skip": 0,
        "output_format": "png",
        "created_at": time.time(),
    }
    return JobPayload(**{**fields, **changes})


def _run_plain_worker(settings: Settings, store: JobStore) -> None:
    worker = SimpleWorker([store.queue("tiny")], connection=store.connection, serializer=JSONSerializer)
    worker.work(burst=True, with_scheduler=False)


def test_the_queued_function_is_the_worker_entry_point() -> None:
    assert f"{tasks.__name__}.{tasks.generate.__name__}" == GENERATE_FUNC


def test_a_plain_rq_worker_runs_a_job_to_the_engines_images(settings: Settings, engine: Engine) -> None:
    store = JobStore(connect(settings), settings)
    payload = _payload()
    store.enqueue(payload)
    _run_plain_worker(settings, store)

    record = store.get(payload.job_id, "acme")
    assert record.status == "succeeded", record
    assert record.result is not None
    assert [image.seed for image in record.result.images] == [99, 100]
    local = build_store(settings)
    assert isinstance(local, LocalStore)
    expected = generate_batch(engine, [payload])[0].images
    assert expected is not None
    for index, image in enumerate(record.result.images):
        stored = np.asarray(Image.open(io.BytesIO(local.get(image.key))).convert("RGB"), dtype=np.int16)
        reference = np.asarray(Image.fromarray((expected[index] * 255).round().astype(np.uint8)), dtype=np.int16)
        assert np.abs(stored - reference).max() <= 1


def test_a_failing_job_fails_with_our_code_and_is_not_retried(settings: Settings) -> None:
    store = JobStore(connect(settings), settings)
    payload = _payload(mode="img2img", image_b64="bm90IGFuIGltYWdl", strength=0.5)  # base64 of "not an image"
    store.enqueue(payload)
    _run_plain_worker(settings, store)

    record = store.get(payload.job_id, "acme")
    assert record.status == "failed"
    assert record.error is not None and record.error["code"] != "internal_error", record.error
    assert store.queue("tiny").count == 0  # not re-queued
