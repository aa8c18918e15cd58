"""Which priority class a worker takes its next batch leader from, and the dequeue that does it.

The rule (:class:`PrioritySchedule`): the highest class with a queued job goes first, except
that a lower class that has been passed over ``share - 1`` times in a row while it had jobs
waiting gets the next leader. So no class starves: while it has work, each class gets at least
one leader in every ``share`` (``SFUMATO_PRIORITY_SHARE``; two classes owed a turn at once go
highest first, so the lowest may wait one leader more). A class whose queue is empty earns no
credit, so a quiet class cannot come back with a burst of owed turns. ``share`` 0 is strict
priority.

The dequeue (:class:`ScheduledQueue`) replaces RQ's: RQ pops from several queues with BLPOP,
which takes a job off the list before anything records it (a worker killed at that moment
would lose the job). Ours moves the head of the first non-empty queue, in the schedule's order,
to that queue's RQ intermediate list in one Lua script, exactly as RQ's own single-queue BLMOVE
does, so RQ's maintenance recovers it after a crash. While every queue is empty the worker
blocks on the queues' wake lists (core/priority.py), which each enqueue pushes a token to, and
looks again at least every :data:`WAKE_POLL_S` (jobs re-queued by RQ's retry or by an API from
before priorities ring no bell).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job

from core.priority import PRIORITIES, PriorityClass, rank, wake_key

#: Longest an idle worker waits before it looks at its queues again without a wake token.
WAKE_POLL_S = 1.0

#: KEYS: queue, intermediate, queue, intermediate... in the order to try. Returns {queue key, job id}
#: for the first non-empty queue (its head moved to its intermediate list), or nil.
_TAKE_FIRST_LUA = """
for q = 1, #KEYS, 2 do
  local id = redis.call('LMOVE', KEYS[q], KEYS[q + 1], 'LEFT', 'RIGHT')
  if id then return {KEYS[q], id} end
end
return nil
"""


class PrioritySchedule:
    """Strict priority with a guaranteed share for lower classes (pure: no Redis)."""

    def __init__(self, share: int, classes: Sequence[PriorityClass] = PRIORITIES) -> None:
        self.share = share
        self.classes = sorted(classes, key=rank)
        self._passed: dict[PriorityClass, int] = dict.fromkeys(self.classes, 0)

    def order(self) -> list[PriorityClass]:
        """The classes in the order to try for the next leader: those owed a turn first."""
        due = [c for c in self.classes if self.share > 0 and self._passed[c] >= self.share - 1]
        return due + [c for c in self.classes if c not in due]

    def taken(self, served: PriorityClass, waiting: Iterable[PriorityClass]) -> None:
        """A leader was taken from ``served`` while ``waiting`` classes still had queued jobs."""
        still = set(waiting)
        for c in self.classes:
            if c == served or c not in still:
                self._passed[c] = 0
            elif rank(c) > rank(served):
                self._passed[c] += 1


class ScheduledQueue(Queue):
    """An RQ Queue whose ``dequeue_any`` honours the order it is given without RQ's BLPOP.

    The worker sets ``queue_class`` to this class and puts its queues in the schedule's order
    before each dequeue (``SfumatoWorker.dequeue_job_and_maintain_ttl``).
    """

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: redis.Redis,
        job_class: type[Job] | None = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[Job, Queue] | None:
        queues = list(queues)
        keys = [key for q in queues for key in (q.key, IntermediateQueue(q.key, connection).key)]
        wake_keys = [wake_key(q.key) for q in queues]
        deadline = None if timeout is None else time.monotonic() + timeout
        take_first = connection.register_script(_TAKE_FIRST_LUA)
        while True:
            taken = take_first(keys=keys)
            if taken:
                queue_key, job_id = (item.decode() if isinstance(item, bytes) else str(item) for item in taken)
                fetched = cls._fetch_dequeued_job(
                    connection,
                    queue_key,
                    job_id,
                    job_class=job_class,
                    serializer=serializer,
                    death_penalty_class=death_penalty_class,
                )
                if fetched is None:  # its hash expired while queued: take the next one
                    continue
                return fetched
            if deadline is None:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DequeueTimeout(timeout, [q.key for q in queues])
            connection.blpop(wake_keys, timeout=min(WAKE_POLL_S, remaining))


def waiting_classes(connection: redis.Redis, queues: dict[PriorityClass, Queue]) -> set[PriorityClass]:
    """The classes whose queues hold jobs now (one round trip)."""
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues.values():
            pipe.llen(queue.key)
        lengths = pipe.execute()
    return {priority for priority, n in zip(queues, lengths, strict=True) if int(n) > 0}
