"""Which queued jobs run together.

A worker takes the oldest job with RQ's normal blocking dequeue (the *leader*), then claims
up to ``max_batch`` images' worth of queued jobs with the same batch key, waiting at most
``max_wait_ms`` for them. The leader is always the head of the queue, so the oldest job of any
key starts within ``max_wait_ms`` of reaching the head: one busy key cannot starve another.

The wait is spent only where it pays (:class:`WaitAdvisor`): partners already queued are always
claimed, but a worker whose recent waits found no late partner (one client at a time, say)
starts at once, and probes again now and then in case traffic has changed.

Claiming is one Lua script: it scans the head of each queue it is given, and moves each
matching job to that queue's RQ intermediate queue exactly as RQ's own dequeue does (LREM +
RPUSH inside the script), so two workers never claim the same job and RQ's maintenance still
sees every taken job. The queues are a model's priority-class queues (core/priority.py) at or
above the leader's class, highest first: jobs of different classes share a batch, but a
bulk run's jobs never ride in an interactive leader's batch and make it slower.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job

from core.batch_key import BATCH_TAG_FIELD

#: KEYS: queue list, intermediate list, queue list, intermediate list... (in the order to scan).
#: ARGV: digest, capacity (images), scan depth per queue, job key prefix, tag field.
#: Returns a flat list: job id, images, queue number (0-based), job id, images, queue number...
_CLAIM_LUA = """
local digest, capacity = ARGV[1], tonumber(ARGV[2])
local depth, prefix, field = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local claimed = {}
for q = 1, #KEYS, 2 do
  if capacity <= 0 then return claimed end
  local queue, intermediate = KEYS[q], KEYS[q + 1]
  local ids = redis.call('LRANGE', queue, 0, depth - 1)
  for _, id in ipairs(ids) do
    local tag = redis.call('HGET', prefix .. id, field)
    if tag then
      local sep = string.find(tag, ':', 1, true)
      local n = sep and tonumber(string.sub(tag, sep + 1))
      if n and string.sub(tag, 1, sep - 1) == digest and n <= capacity then
        if redis.call('LREM', queue, 1, id) == 1 then
          redis.call('RPUSH', intermediate, id)
          claimed[#claimed + 1] = id
          claimed[#claimed + 1] = n
          claimed[#claimed + 1] = (q - 1) / 2
          capacity = capacity - n
          if capacity <= 0 then break end
        end
      end
    end
  end
end
return claimed
"""


@dataclass(frozen=True)
class BatchPolicy:
    """The two knobs (as in Ray Serve's ``@serve.batch``) plus how far to look for partners."""

    max_images: int
    max_wait_s: float
    scan_depth: int = 64
    poll_interval_s: float = 0.005


#: ``claim(capacity_in_images) -> [(job_id, images), ...]``
ClaimFn = Callable[[int], list[tuple[str, int]]]


class WaitAdvisor:
    """Whether a leader should wait for late partners, learned from this worker's recent waits.

    Waiting ``max_wait_ms`` pays when partners arrive within it (closed-loop clients resubmitting
    together, bursts); at one request at a time it only adds latency to every image. So after
    ``patience`` waits in a row that found no late partner, the worker stops waiting (already
    queued partners are still claimed) and waits again on every ``probe_every``-th batch to
    notice busier traffic; the first wait that finds one restores waiting at once. The bound
    (no job waits longer than ``max_wait_ms`` for partners) is unchanged.
    """

    def __init__(self, enabled: bool = True, patience: int = 8, probe_every: int = 16) -> None:
        self.enabled = enabled
        self.patience = patience
        self.probe_every = probe_every
        self._fruitless = 0  # waits in a row that found no late partner
        self._skipped = 0

    def should_wait(self) -> bool:
        if not self.enabled or self._fruitless < self.patience:
            return True
        self._skipped += 1
        if self._skipped >= self.probe_every:
            self._skipped = 0
            return True
        return False

    def record(self, waited: bool, late_partners: int) -> None:
        """After a gather: whether it waited out the whole bound, and how many partners arrived
        while it waited."""
        if late_partners:
            self._fruitless = 0
            self._skipped = 0
        elif waited:
            self._fruitless += 1


def gather_partners(
    leader_images: int,
    exact: bool,
    claim: ClaimFn,
    policy: BatchPolicy,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    advisor: WaitAdvisor | None = None,
) -> list[str]:
    """Claim partner jobs for a leader until the batch is full or the wait bound passes.

    Pure policy (no Redis): ``claim`` does the atomic work. An ``exact`` leader runs alone.
    With an ``advisor`` that says not to wait, only the partners already queued are claimed.
    """
    if exact or leader_images >= policy.max_images:
        return []
    wait = advisor.should_wait() if advisor is not None else True
    deadline = clock() + (policy.max_wait_s if wait else 0.0)
    used, partners, late = leader_images, [], 0
    first = True
    while True:
        for job_id, images in claim(policy.max_images - used):
            partners.append(job_id)
            used += images
            late += 0 if first else 1
        first = False
        remaining = deadline - clock()
        if used >= policy.max_images or remaining <= 0:
            if advisor is not None:
                # A batch filled by partners already queued tells nothing about waiting: neutral.
                advisor.record(wait and used < policy.max_images, late)
            return partners
        sleep(min(policy.poll_interval_s, remaining))


class PartnerClaimer:
    """Atomically takes queued jobs with one batch digest off RQ queues, scanned in order."""

    def __init__(self, connection: redis.Redis, queues: Queue | list[Queue], scan_depth: int) -> None:
        self.queues = [queues] if isinstance(queues, Queue) else list(queues)
        self._script = connection.register_script(_CLAIM_LUA)
        self._keys = [key for q in self.queues for key in (q.key, IntermediateQueue(q.key, connection).key)]
        self._scan_depth = scan_depth

    def claim_from(self, digest: str, capacity: int) -> list[tuple[str, int, Queue]]:
        """``[(job_id, images, the queue it was on), ...]``, at most ``capacity`` images."""
        flat = self._script(
            keys=self._keys,
            args=[digest, capacity, self._scan_depth, Job.redis_job_namespace_prefix, BATCH_TAG_FIELD],
        )
        decoded = [item.decode() if isinstance(item, bytes) else item for item in flat]
        return [
            (str(decoded[i]), int(decoded[i + 1]), self.queues[int(decoded[i + 2])]) for i in range(0, len(decoded), 3)
        ]

    def claim(self, digest: str, capacity: int) -> list[tuple[str, int]]:
        """``[(job_id, images), ...]``: :meth:`claim_from` without the queues."""
        return [(job_id, images) for job_id, images, _queue in self.claim_from(digest, capacity)]
