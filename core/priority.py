"""Priority classes: which jobs a worker takes first when interactive and bulk traffic share it.

Three classes, highest first: ``interactive`` (a person is waiting), ``standard`` (the default,
and every job from before priorities existed), ``batch`` (bulk runs). Each class of a model has
its own RQ queue; the ``standard`` queue keeps the name a model's only queue always had
(``{prefix}:{model}``), so during a rolling deploy old API replicas and old workers keep using
it unchanged. The other classes append ``:interactive`` / ``:batch`` (model ids cannot contain
``:``, so names never collide).

Imports nothing from the rest of ``core`` but the settings type, so schemas, jobs, metrics and
the worker can all depend on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from core.config import Settings

PriorityClass = Literal["interactive", "standard", "batch"]
#: Highest first: the order a worker tries the queues in when no lower class is owed a turn.
PRIORITIES: tuple[PriorityClass, ...] = get_args(PriorityClass)
DEFAULT_PRIORITY: PriorityClass = "standard"
#: Redis keys a worker blocks on while idle, one per class queue (``rq:queue:...:wake``); the
#: API pushes a token on each enqueue, so an idle worker wakes at once (see core/jobs.py).
WAKE_SUFFIX = ":wake"
#: Tokens kept per wake list: enough to wake every idle worker of a model, bounded.
WAKE_CAP = 64


def rank(priority: PriorityClass) -> int:
    """0 for the highest class; a larger number is a lower class."""
    return PRIORITIES.index(priority)


def at_or_above(priority: PriorityClass) -> tuple[PriorityClass, ...]:
    """The classes ranked at or above ``priority``, highest first."""
    return PRIORITIES[: rank(priority) + 1]


def queue_name(settings: Settings, model_id: str, priority: PriorityClass = DEFAULT_PRIORITY) -> str:
    """The RQ queue of one model and class. ``standard`` is the model's historical queue name."""
    base = f"{settings.queue_prefix}:{model_id}"
    return base if priority == DEFAULT_PRIORITY else f"{base}:{priority}"


def queue_names(settings: Settings, model_id: str) -> dict[PriorityClass, str]:
    """Every class queue of a model, highest class first."""
    return {priority: queue_name(settings, model_id, priority) for priority in PRIORITIES}


def priority_of_queue(name: str) -> PriorityClass:
    """The class a queue name stands for (a name without a class suffix is ``standard``)."""
    for priority in PRIORITIES:
        if priority != DEFAULT_PRIORITY and name.endswith(f":{priority}"):
            return priority
    return DEFAULT_PRIORITY


def wake_key(queue_key: str) -> str:
    """The list an idle worker of ``queue_key`` blocks on (RQ's queue key plus a suffix)."""
    return queue_key + WAKE_SUFFIX
