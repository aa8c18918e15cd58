"""Batch isolation on the real engine: a job whose input makes the pipeline raise fails alone,
with its own error, and its batch partners get exactly the images they would have had alone.

The poisoned input is the one from issue 18: a lone UTF-16 surrogate in ``negative_prompt``,
which the API now refuses (tests/integration/test_text_fields.py) but a payload queued by an
older API, or any input the checks do not foresee, can still carry. The real CLIP tokenizer
raises on it, inside the batch's pipeline call.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from core.schemas import JobPayload
from tests.conftest import SettingsFactory
from tests.integration.test_batch_invariance import assert_same_images
from tests.support.engine import payload
from worker.pipelines.engine import Engine
from worker.pipelines.types import PreparedJob
from worker.runtime import metrics as worker_metrics
from worker.runtime.execute import generate_batch

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

POISON = "\ud800"  # what json.loads makes of "\ud800"


@pytest.fixture
def registry(make_settings: SettingsFactory) -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    worker_metrics.install(make_settings(max_batch=8), registry=registry, serve=False)
    try:
        yield registry
    finally:
        worker_metrics.uninstall()


@pytest.fixture
def unchecked_prepare(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: let the poisoned input past the per-job checks of ``Engine.prepare``
    (which since issue 19 tokenizes each prompt to count its chunks, and so refuses this input
    on its own), as an input that no check foresees would get past, so it reaches the batch's
    pipeline call and the bisection is what has to protect its partners."""
    checked = engine.prepare

    def prepare(job: JobPayload) -> PreparedJob:
        return PreparedJob(job) if POISON in job.negative_prompt else checked(job)

    monkeypatch.setattr(engine, "prepare", prepare)


def _count(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name, {"model": "tiny"}) or 0.0


@pytest.mark.usefixtures("unchecked_prepare")
def test_a_poisoned_job_fails_alone_and_its_partners_get_their_solo_images(
    engine: Engine, registry: CollectorRegistry
) -> None:
    jobs = [
        payload(job_id="a", tenant="alice", prompt="a red fox", seed=1),
        payload(job_id="poisoned", tenant="mallory", negative_prompt=POISON, seed=2),
        payload(job_id="b", tenant="alice", prompt="a castle", seed=3, n=2),
        payload(job_id="c", tenant="bob", prompt="", seed=4),
    ]
    solo = {job.job_id: engine.generate_arrays([job])[0] for job in jobs if job.job_id != "poisoned"}
    generated = generate_batch(engine, jobs)
    by_id = {g.payload.job_id: g for g in generated}
    assert [g.payload.job_id for g in generated] == ["a", "poisoned", "b", "c"]  # list in, list out
    for job_id, want in solo.items():
        got = by_id[job_id]
        assert got.error is None and got.images is not None, (job_id, got.error)
        assert_same_images(want, got.images)
    error = by_id["poisoned"].error
    assert by_id["poisoned"].images is None and error is not None
    assert error["code"] == "generation_failed"
    assert "TypeError" not in error["message"] and "TextEncodeInput" not in error["message"], error
    # "a" ran alone in the end (its half held the poisoned job): bit for bit its solo image.
    assert by_id["a"].images is not None and np.array_equal(solo["a"], by_id["a"].images)
    assert _count(registry, "sfumato_batch_isolations_total") == 1
    assert _count(registry, "sfumato_jobs_failed_alone_total") == 1


@pytest.mark.usefixtures("unchecked_prepare")
def test_a_batch_where_every_job_is_poisoned_fails_each_with_its_own_error(
    engine: Engine, registry: CollectorRegistry
) -> None:
    jobs = [payload(job_id=f"p{i}", negative_prompt=POISON, seed=i) for i in range(3)]
    generated = generate_batch(engine, jobs)
    assert [g.error["code"] if g.error else None for g in generated] == ["generation_failed"] * 3
    assert _count(registry, "sfumato_jobs_failed_alone_total") == 3
    (after,) = generate_batch(engine, [payload(job_id="after")])  # the engine is fine afterwards
    assert after.error is None and after.images is not None


def test_preparing_refuses_the_poisoned_job_before_the_batch_runs(engine: Engine, registry: CollectorRegistry) -> None:
    """Without fault injection the worker refuses this input while preparing the job (counting
    its prompt's chunks tokenizes it): it fails alone and nothing needs re-running."""
    jobs = [payload(job_id="a", prompt="a red fox", seed=1), payload(job_id="poisoned", negative_prompt=POISON, seed=2)]
    generated = generate_batch(engine, jobs)
    assert generated[0].error is None and generated[0].images is not None
    assert generated[1].images is None and generated[1].error is not None
    assert generated[1].error["code"] == "generation_failed"
    assert np.array_equal(engine.generate_arrays([jobs[0]])[0], generated[0].images)  # it ran alone
    assert _count(registry, "sfumato_batch_isolations_total") == 0


class Canceled(Exception):
    """What the runner's step callback raises when every job of the batch was canceled."""


def test_what_the_step_callback_raises_is_never_isolated(engine: Engine, registry: CollectorRegistry) -> None:
    """Cancellation (worker/runtime/runner.py raises BatchCanceled from the step callback) stops
    the batch as before: no job is re-run, however many the batch holds."""
    calls = 0

    def cancel_at_once(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        raise Canceled()

    jobs = [payload(job_id="a", seed=1), payload(job_id="b", seed=2), payload(job_id="c", seed=3)]
    generated = generate_batch(engine, jobs, cancel_at_once)
    assert calls == 1  # one pipeline call, stopped at its first step
    assert all(g.images is None and g.error is not None for g in generated)
    assert _count(registry, "sfumato_batch_isolations_total") == 0
