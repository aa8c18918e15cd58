"""The fault-injection suite at CI scale: every scenario, and its control that must show loss.

Full scale (300+ jobs, 5+ kills, a 30 s storage outage) with figures committed to
``bench/results/chaos.json``: ``python -m tests.chaos.run --full``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import harness

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def assert_nothing_lost(result: dict) -> None:
    assert result["lost"] == 0 and result["stuck"] == 0, result
    assert result["duplicates"] == 0 and result["succeeded_without_objects"] == 0, result


def test_killed_workers_lose_nothing_and_the_control_without_retries_does(tmp_path: Path) -> None:
    protected = harness.scenario_worker_kills(harness.new_workdir(tmp_path, "kills"), jobs=20, kills=2)
    assert_nothing_lost(protected)
    assert protected["succeeded"] == protected["acknowledged"], protected
    control = harness.scenario_worker_kills(harness.new_workdir(tmp_path, "kills-ctl"), jobs=20, kills=2, attempts=1)
    assert control["not_succeeded_by_code"].get("worker_lost", 0) > 0, control


def test_redis_restart_keeps_acknowledged_jobs_with_aof_and_loses_them_without(tmp_path: Path) -> None:
    protected = harness.scenario_redis_kill(harness.new_workdir(tmp_path, "redis"), jobs=16, workers=1)
    assert_nothing_lost(protected)
    assert protected["api_statuses_other_than_202_503"] == {}, protected
    control = harness.scenario_redis_kill(harness.new_workdir(tmp_path, "redis-ctl"), jobs=16, aof=False, workers=1)
    assert control["lost"] > 0, control


def test_storage_outage_never_reports_success_without_objects(tmp_path: Path) -> None:
    protected = harness.scenario_storage_outage(
        harness.new_workdir(tmp_path, "s3"), jobs=12, outage_s=3, budget_s=60, workers=1
    )
    assert_nothing_lost(protected)
    assert protected["succeeded"] == protected["acknowledged"], protected
    control = harness.scenario_storage_outage(
        harness.new_workdir(tmp_path, "s3-ctl"), jobs=12, outage_s=3, budget_s=0, workers=1
    )
    assert_nothing_lost(control)  # even without retries, never "succeeded" without the objects
    assert control["not_succeeded_by_code"].get("storage_unavailable", 0) > 0, control


def test_sigterm_during_a_batch_abandons_nothing_and_sigkill_without_retries_does(tmp_path: Path) -> None:
    protected = harness.scenario_sigterm(harness.new_workdir(tmp_path, "term"), jobs=12)
    assert_nothing_lost(protected)
    assert protected["worker_exit_code"] == 0 and protected["succeeded"] == protected["acknowledged"], protected
    control = harness.scenario_sigterm(harness.new_workdir(tmp_path, "term-ctl"), jobs=12, kill_instead=True)
    assert control["not_succeeded_by_code"].get("worker_lost", 0) > 0, control


def test_a_poisoned_input_fails_only_its_own_job(
    tmp_path: Path,
) -> None:
    protected = harness.scenario_poisoned_input(harness.new_workdir(tmp_path, "poison"), jobs=16, poisoned=3)
    assert_nothing_lost(protected)
    assert protected["failed_by_another_input"] == 0, protected
    assert protected["poisoned_failed"] == protected["poisoned"], protected
    assert protected["succeeded_in_a_poisoned_batch"] > 0, protected  # they did share batches
    # No control run here: since prompts are tokenized per job while a batch is prepared
    # (issue 19), this input fails alone even with SFUMATO_BATCH_ISOLATION=false. The control
    # figures in bench/results/chaos.json were measured before that; the bisection that protects
    # against inputs no check foresees is tested in tests/integration/test_batch_isolation.py.
