"""The priority schedule: highest class first, no class starves, an idle class banks nothing."""

from __future__ import annotations

from collections import Counter

import pytest

from core.config import Settings
from core.jobs import wire_payload
from core.priority import PRIORITIES, PriorityClass, at_or_above, priority_of_queue, queue_name, queue_names
from core.schemas import JobPayload
from worker.runtime.priority import PrioritySchedule


def run(schedule: PrioritySchedule, backlog: dict[PriorityClass, int], leaders: int) -> list[PriorityClass]:
    """Serve ``leaders`` leaders from queues holding ``backlog`` jobs (-1: never empties)."""
    left = dict(backlog)
    served: list[PriorityClass] = []
    for _ in range(leaders):
        waiting = [c for c in schedule.order() if left.get(c, 0) != 0]
        if not waiting:
            break
        take = waiting[0]
        left[take] -= 1 if left[take] > 0 else 0
        served.append(take)
        schedule.taken(take, [c for c in PRIORITIES if left.get(c, 0) != 0])
    return served


def test_the_highest_waiting_class_goes_first_with_strict_priority() -> None:
    served = run(PrioritySchedule(share=0), {"batch": -1, "standard": 3, "interactive": 2}, 10)
    assert served == ["interactive"] * 2 + ["standard"] * 3 + ["batch"] * 5


@pytest.mark.parametrize("share", [2, 3, 10, 50])
def test_no_class_starves_while_higher_classes_are_saturated(share: int) -> None:
    served = run(PrioritySchedule(share=share), {"batch": -1, "standard": -1, "interactive": -1}, 5000)
    counts = Counter(served)
    # Each lower class gets its guaranteed share; two classes owed a turn at once cost the
    # lower one at most one extra leader, hence share + 1 for the window.
    for lower in ("standard", "batch"):
        assert counts[lower] >= len(served) // (share + 1), (share, counts)
        for start in range(0, len(served) - share):
            assert lower in served[start : start + share + 1], (share, lower, start)
    assert counts["interactive"] >= counts["standard"] >= counts["batch"]


def test_a_lower_class_only_gets_its_share_not_more() -> None:
    served = run(PrioritySchedule(share=10), {"batch": -1, "interactive": -1}, 1000)
    assert 90 <= Counter(served)["batch"] <= 100


def test_an_empty_class_banks_no_credit() -> None:
    schedule = PrioritySchedule(share=4)
    for _ in range(50):  # batch empty all along: nothing owed to it
        schedule.taken("interactive", ["interactive"])
    assert schedule.order() == ["interactive", "standard", "batch"]
    schedule.taken("interactive", ["interactive", "batch"])
    assert schedule.order()[0] == "interactive"  # owed only after share - 1 pass-overs


def test_a_worker_with_one_queue_only_has_that_class() -> None:
    schedule = PrioritySchedule(share=3, classes=["standard"])
    assert run(schedule, {"standard": 2}, 5) == ["standard", "standard"]


def test_queue_names_keep_the_standard_queue_and_add_the_others() -> None:
    settings = Settings(queue_prefix="sfumato")
    assert queue_name(settings, "tiny") == "sfumato:tiny"  # what old API replicas and workers use
    assert queue_names(settings, "tiny") == {
        "interactive": "sfumato:tiny:interactive",
        "standard": "sfumato:tiny",
        "batch": "sfumato:tiny:batch",
    }
    for priority, name in queue_names(settings, "tiny").items():
        assert priority_of_queue(name) == priority
    assert at_or_above("batch") == PRIORITIES and at_or_above("interactive") == ("interactive",)


def test_a_standard_job_on_the_wire_is_what_a_worker_before_priorities_reads() -> None:
    fields = {
        "job_id": "a" * 32, "tenant": "t", "model": "tiny", "mode": "txt2img", "prompt": "p",
        "negative_prompt": "", "width": 64, "height": 64, "steps": 4, "guidance_scale": 7.5,
        "scheduler": "ddim", "seed": 1, "n": 1, "clip_skip": 0, "output_format": "png", "created_at": 1.0,
    }  # fmt: skip
    assert "priority" not in wire_payload(JobPayload(**fields))
    assert wire_payload(JobPayload(**fields, priority="batch"))["priority"] == "batch"
    assert JobPayload.model_validate(wire_payload(JobPayload(**fields))).priority == "standard"
