"""Preemption on a real Redis with a real worker (tiny model, in-process): a running batch of bulk
jobs yields to an interactive job at a denoising step, its jobs go back to the head of their
queue without using a retry, succeed exactly once with the images they have alone, and are
not preempted again once their lost-work budget is spent.

The worker runs on the test's thread (RQ installs signal handlers there); a second thread plays
the clients, submitting each interactive job once it sees the state it waits for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image
from prometheus_client import CollectorRegistry
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from core.config import Settings
from core.jobs import JobRecord, JobStore, new_job_id
from core.priority import PriorityClass, queue_names
from core.schemas import JobPayload
from core.storage import LocalStore
from tests.conftest import SettingsFactory
from tests.integration.test_batch_invariance import to_8bit
from tests.support.engine import payload
from worker.pipelines.engine import Engine
from worker.runtime import metrics as worker_metrics
from worker.runtime.preemption_budget import META_LOST_WORK, META_PREEMPTIONS, MIN_CHARGE
from worker.runtime.runner import SfumatoWorker

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

#: Enough steps that the bulk batch is still denoising when the client thread reacts to it.
BULK_STEPS = 60


def job(priority: PriorityClass, **fields: Any) -> JobPayload:
    return payload(job_id=new_job_id(), priority=priority, created_at=time.time(), **fields)


@pytest.fixture
def registry(make_settings: SettingsFactory) -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    worker_metrics.install(make_settings(), registry=registry, serve=False)
    try:
        yield registry
    finally:
        worker_metrics.uninstall()


class Clients(threading.Thread):
    """Runs ``script`` beside the worker; keeps what it raised for the test to re-raise."""

    def __init__(self, script: Callable[[], None]) -> None:
        super().__init__(name="clients", daemon=True)
        self.script = script
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.script()
        except BaseException as exc:
            self.error = exc


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def serve(settings: Settings, engine: Engine, conn: redis.Redis, root: Path) -> None:
    """One worker on every class queue of the model, in burst mode (stops when all are empty)."""
    worker = SfumatoWorker(
        list(queue_names(settings, "tiny").values()),
        engine=engine,
        store=LocalStore(root, b"k" * 32),
        settings=settings,
        connection=conn,
    )
    worker.work(burst=True)


def stored_pixels(root: Path, record: JobRecord) -> np.ndarray:
    assert record.result is not None
    return np.stack([np.asarray(Image.open(root / image.key).convert("RGB")) for image in record.result.images])


def test_a_bulk_batch_yields_to_an_interactive_job_once_and_still_succeeds_once(
    make_settings: SettingsFactory,
    clean_redis: redis.Redis,
    engine: Engine,
    registry: CollectorRegistry,
    tmp_path: Path,
) -> None:
    # A budget below one stop's least charge: one preemption spends it (the arithmetic of larger
    # budgets is tested in tests/unit/test_preemption_budget.py).
    settings = make_settings(
        max_batch=4, max_wait_ms=0, upload_stage_depth=0, priority_share=10, preempt=True,
        preempt_max_lost_work=MIN_CHARGE / 2,
    )  # fmt: skip
    store = JobStore(clean_redis, settings)
    bulk = [job("batch", prompt=f"bulk {i}", seed=100 + i, steps=BULK_STEPS, tenant="t-bulk") for i in range(4)]
    first = job("interactive", prompt="a person waits", steps=20, tenant="t-person")
    second = job("interactive", prompt="another person waits", tenant="t-person")
    alone = {p.job_id: to_8bit(engine.generate_arrays([p])[0]) for p in bulk}
    for p in bulk:
        store.enqueue(p)
    retries_before = {p.job_id: Job.fetch(p.job_id, clean_redis, JSONSerializer).retries_left for p in bulk}

    def status(p: JobPayload) -> str:
        return store.get(p.job_id, p.tenant).status

    seen_while_first_ran: list[str] = []

    def clients() -> None:
        wait_for("the bulk batch to run", lambda: status(bulk[0]) == "running")
        store.enqueue(first)

        def snapshot() -> bool:  # the bulk jobs' states, read while the interactive job runs
            before = status(first)
            if before == "succeeded":
                return True
            states = [status(p) for p in bulk]
            if before == status(first) == "running" and not seen_while_first_ran:
                seen_while_first_ran.extend(states)
            return False

        wait_for("the interactive job to end", snapshot)
        wait_for("the bulk batch to run again", lambda: status(first) == "succeeded" and status(bulk[0]) == "running")
        store.enqueue(second)

    thread = Clients(clients)
    thread.start()
    serve(settings, engine, clean_redis, tmp_path / "images")
    thread.join(timeout=5)
    if thread.error is not None:
        raise thread.error

    records = {p.job_id: store.get(p.job_id, p.tenant) for p in [*bulk, first, second]}
    assert {r.status for r in records.values()} == {"succeeded"}, {k: r.status for k, r in records.items()}
    # The bulk jobs went back to queued while the interactive job ran, and it finished first.
    assert seen_while_first_ran == ["queued"] * 4
    ended = {job_id: r.ended_at or 0.0 for job_id, r in records.items()}
    assert all(ended[first.job_id] < ended[p.job_id] for p in bulk)
    # Its budget spent, the re-run batch was not stopped again: the second interactive job waited.
    assert all(ended[p.job_id] < ended[second.job_id] for p in bulk)
    assert registry.get_sample_value("sfumato_batch_preemptions_total", {"model": "tiny"}) == 1
    batch_queue = queue_names(settings, "tiny")["batch"]
    assert FailedJobRegistry(batch_queue, connection=clean_redis, serializer=JSONSerializer).count == 0
    for p in bulk:
        rq_job = Job.fetch(p.job_id, clean_redis, JSONSerializer)
        assert rq_job.meta.get(META_PREEMPTIONS) == 1
        assert MIN_CHARGE <= rq_job.meta[META_LOST_WORK] <= 1.0
        assert rq_job.retries_left == retries_before[p.job_id]  # no attempt used
        results = rq_job.results()
        assert [r.type for r in results] == [Result.Type.SUCCESSFUL]  # exactly once, no failure record
        got = stored_pixels(tmp_path / "images", records[p.job_id]).astype(np.int16)
        levels = np.abs(got - alone[p.job_id])
        assert int(levels.max()) <= 1 and float((levels > 0).mean()) <= 0.001, p.job_id
    # All four ran as one batch again after the preemption.
    batches = {records[p.job_id].result.batch.id for p in bulk}  # type: ignore[union-attr]
    assert len(batches) == 1


def test_without_preemption_the_interactive_job_waits_for_the_bulk_batch(
    make_settings: SettingsFactory, clean_redis: redis.Redis, engine: Engine, tmp_path: Path
) -> None:
    """SFUMATO_PREEMPT=false: the behaviour before preemption existed (the batch runs to its end)."""
    settings = make_settings(max_batch=4, max_wait_ms=0, upload_stage_depth=0, preempt=False)
    store = JobStore(clean_redis, settings)
    bulk = [job("batch", prompt=f"bulk {i}", seed=200 + i, steps=BULK_STEPS) for i in range(2)]
    urgent = job("interactive", prompt="a person waits")
    for p in bulk:
        store.enqueue(p)

    def clients() -> None:
        wait_for("the bulk batch to run", lambda: store.get(bulk[0].job_id, bulk[0].tenant).status == "running")
        store.enqueue(urgent)

    thread = Clients(clients)
    thread.start()
    serve(settings, engine, clean_redis, tmp_path / "images")
    thread.join(timeout=5)
    if thread.error is not None:
        raise thread.error
    records = {p.job_id: store.get(p.job_id, p.tenant) for p in [*bulk, urgent]}
    assert {r.status for r in records.values()} == {"succeeded"}
    assert all((records[p.job_id].ended_at or 0) < (records[urgent.job_id].ended_at or 0) for p in bulk)
    assert not any(Job.fetch(p.job_id, clean_redis, JSONSerializer).meta.get(META_PREEMPTIONS) for p in bulk)
