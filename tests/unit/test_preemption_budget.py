"""The preemption budget: a bulk job may be stopped again while its lost work is under budget."""

from __future__ import annotations

from typing import Any

import pytest

from worker.runtime.preemption_budget import (
    META_LOST_WORK,
    META_PREEMPTIONS,
    MIN_CHARGE,
    charge,
    lost_work,
    may_preempt,
)


def test_a_job_never_preempted_has_lost_nothing_and_may_be_preempted() -> None:
    assert lost_work({}) == 0.0
    assert may_preempt([{}, {}], budget=1.0)


def test_each_stop_charges_the_steps_it_threw_away() -> None:
    meta: dict[str, Any] = {}
    charge(meta, done_steps=15, total_steps=20)
    assert meta == {META_LOST_WORK: 0.75, META_PREEMPTIONS: 1}
    assert may_preempt([meta], budget=1.0)
    charge(meta, done_steps=10, total_steps=20)
    assert meta[META_LOST_WORK] == pytest.approx(1.25) and meta[META_PREEMPTIONS] == 2
    assert not may_preempt([meta], budget=1.0)


def test_early_stops_still_cost_a_quarter_so_the_number_of_stops_is_bounded() -> None:
    meta: dict[str, Any] = {}
    stops = 0
    while may_preempt([meta], budget=1.0):
        charge(meta, done_steps=0, total_steps=20)
        stops += 1
    assert stops == round(1.0 / MIN_CHARGE) == 4


def test_one_job_over_budget_protects_its_whole_batch() -> None:
    spent: dict[str, Any] = {}
    charge(spent, done_steps=20, total_steps=20)
    assert not may_preempt([{}, spent, {}], budget=1.0)


def test_a_zero_budget_never_preempts_and_odd_meta_reads_as_nothing_lost() -> None:
    assert not may_preempt([{}], budget=0.0)
    assert lost_work({META_LOST_WORK: "junk"}) == 0.0
    assert lost_work({META_LOST_WORK: -3}) == 0.0
