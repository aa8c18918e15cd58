"""How much preemption a bulk job may take: a budget of lost work, not a count.

A preempted batch goes back to the head of its queues and runs again from its first step, so
each preemption throws away the steps it had run. Preempting a job only once (the first bound)
kept bulk work safe but made the *next* interactive request wait for the whole re-run whenever
it arrived while that re-run was going (measured: 2.33x the idle latency at the median,
docs/operations/priorities.md). The bound is now on what was lost: a job may be stopped again
while the work it has lost to preemptions is under ``SFUMATO_PREEMPT_MAX_LOST_WORK`` runs of its
own (default 1.0: bulk work costs at most about twice its run time, plus the interactive jobs
served ahead of it). Each stop is charged at least :data:`MIN_CHARGE` of a run, so a job is
stopped at most ``budget / MIN_CHARGE`` times however early the stops come.

Pure functions over ``job.meta`` values, so the arithmetic is tested without a worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: ``job.meta``: the fraction of one run this job has lost to preemptions so far (float).
META_LOST_WORK = "preempted_work"
#: ``job.meta``: how many times this job's batch was preempted (int; for logs and tests).
META_PREEMPTIONS = "preemptions"
#: The least a preemption costs a job's budget, in runs: bounds the number of stops to
#: budget / MIN_CHARGE (4 with the default budget) even when every stop comes at the first step.
MIN_CHARGE = 0.25


def lost_work(meta: Mapping[str, Any]) -> float:
    """The fraction of a run a job has lost so far (0.0 for a job never preempted)."""
    try:
        return max(0.0, float(meta.get(META_LOST_WORK, 0.0)))
    except (TypeError, ValueError):
        return 0.0


def may_preempt(metas: Iterable[Mapping[str, Any]], budget: float) -> bool:
    """True when every job of a batch has budget left: one job over budget protects the batch."""
    return all(lost_work(meta) < budget for meta in metas)


def charge(meta: dict[str, Any], done_steps: int, total_steps: int) -> None:
    """Record one preemption in ``meta``: the fraction of the run that was thrown away (at
    least :data:`MIN_CHARGE`) and the count."""
    fraction = done_steps / total_steps if total_steps > 0 else 1.0
    meta[META_LOST_WORK] = lost_work(meta) + max(MIN_CHARGE, min(1.0, fraction))
    meta[META_PREEMPTIONS] = int(meta.get(META_PREEMPTIONS, 0)) + 1
