"""Per-key rate limits and quotas, atomic in Redis so every API replica shares them.

Three limits per key, plus one global cap per model queue:

- ``requests_per_second``: a token bucket (``rate_limit_burst`` tokens, refilled at
  ``rate_limit_rps``), one token per authenticated request.
- ``images_per_minute``: a token bucket of ``images_per_minute`` tokens refilled over a minute;
  a job costs ``n`` tokens.
- ``concurrent_jobs``: queued + running jobs of the key. The key's admitted job ids live in a
  sorted set (scored by admission time). Before counting, the admission script drops every id
  whose RQ job has ended (finished, failed, stopped, canceled) or expired (its hash is gone),
  so a slot comes back however the job ended, without any hook in the worker. An id whose hash
  does not exist yet is counted for a short grace period: it was admitted a moment ago and its
  enqueue is still on the way.
- ``queue_depth``: queued jobs of the model in the job's priority class (each class has its own
  queue, so a bulk run that fills the batch queue never refuses an interactive request); at the
  cap new jobs of that class get ``queue_full``. The check
  reads the queue length in the same script, so concurrent admissions can overshoot the cap by
  at most the number of requests in flight.

Each check-and-take is one Lua script: Redis runs it atomically, so two replicas can never both
take the last token. Time is Redis's ``TIME``, so replicas with skewed clocks still agree. A
refused request consumes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq.job import Job

from core.apikeys import Principal
from core.config import Settings
from core.errors import InvalidRequest, QueueFull, RateLimited
from core.jobs import JobStore, redis_errors
from core.schemas import JobPayload

#: Seconds an admitted id counts although its job hash does not exist yet (enqueue in flight).
ADMISSION_GRACE_S = 30
#: Retry-After when a key is at its concurrency limit or the queue is full: a job ends or a
#: worker takes one in about this time, and polling faster only adds load.
CONCURRENCY_RETRY_S = 2
QUEUE_FULL_RETRY_S = 5
#: Most entries kept in a tenant's job index (GET /v1/images lists the newest).
TENANT_INDEX_CAP = 10_000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

#: take(key, capacity, rate/s, cost): 0 when taken, else whole seconds until it could be.
_TAKE = """
local function take(key, capacity, rate, cost, now)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or capacity
  local ts = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
  if tokens < cost then
    return math.max(1, math.ceil((cost - tokens) / rate))
  end
  redis.call('HSET', key, 'tokens', tostring(tokens - cost), 'ts', tostring(now))
  redis.call('EXPIRE', key, math.ceil(capacity / rate) + 1)
  return 0
end
"""

#: KEYS: bucket. ARGV: capacity, rate. Returns 0 or seconds to wait.
_REQUEST_SCRIPT = (
    _NOW
    + _TAKE
    + """
return take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 1, now)
"""
)

#: KEYS: live set, image bucket, queue list, tenant index.
#: ARGV: job id, n, max concurrent, images/min, max queue depth, job hash prefix, grace s,
#:       index ttl s, index cap.
#: Returns {limit name, seconds} on refusal, {'ok', 0} when admitted.
_ADMIT_SCRIPT = (
    _NOW
    + _TAKE
    + """
local job_id, n = ARGV[1], tonumber(ARGV[2])
local max_live, per_minute, max_queue = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local job_prefix, grace = ARGV[6], tonumber(ARGV[7])
if max_queue > 0 and redis.call('LLEN', KEYS[3]) >= max_queue then
  return {'queue_depth', 0}
end
if max_live > 0 then
  local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  local live = 0
  for i = 1, #members, 2 do
    local status = redis.call('HGET', job_prefix .. members[i], 'status')
    local ended = status == 'finished' or status == 'failed' or status == 'stopped' or status == 'canceled'
    local vanished = (not status) and (now - tonumber(members[i + 1]) > grace)
    if ended or vanished then
      redis.call('ZREM', KEYS[1], members[i])
    else
      live = live + 1
    end
  end
  if live >= max_live then
    return {'concurrent_jobs', 0}
  end
end
if per_minute > 0 then
  local wait = take(KEYS[2], per_minute, per_minute / 60, n, now)
  if wait > 0 then
    return {'images_per_minute', wait}
  end
end
if max_live > 0 then
  redis.call('ZADD', KEYS[1], now, job_id)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
end
redis.call('ZADD', KEYS[4], now, job_id)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[8]))
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[9]) - 1)
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[8]))
return {'ok', 0}
"""
)


@dataclass(frozen=True)
class Admission:
    """A job admitted for a key; :meth:`Quotas.release` undoes it if the enqueue fails."""

    key_id: str
    tenant: str
    job_id: str


class Quotas:
    """The limits of one deployment, over one Redis connection."""

    def __init__(
        self, connection: redis.Redis, settings: Settings, jobs: JobStore, *, grace_s: float = ADMISSION_GRACE_S
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.jobs = jobs
        self.grace_s = grace_s
        self._prefix = f"{settings.queue_prefix}:quota"
        self._request = connection.register_script(_REQUEST_SCRIPT)
        self._admit = connection.register_script(_ADMIT_SCRIPT)

    def _live_key(self, key_id: str) -> str:
        return f"{self._prefix}:live:{key_id}"

    def tenant_index_key(self, tenant: str) -> str:
        return f"{self.settings.queue_prefix}:tenant-jobs:{tenant}"

    def check_request(self, principal: Principal) -> None:
        """Take one request token for the key; :class:`RateLimited` when the bucket is empty."""
        rps = principal.limits.rate_limit_rps or 0.0
        if rps <= 0:
            return
        burst = principal.limits.rate_limit_burst or 1
        with redis_errors():
            wait = int(self._request(keys=[f"{self._prefix}:rps:{principal.key_id}"], args=[burst, rps]))
        if wait:
            raise RateLimited(
                f"this key may send {rps:g} requests per second (bursts of {burst}); retry in {wait} s",
                param="requests_per_second",
                retry_after_s=wait,
            )

    def admit(self, principal: Principal, payload: JobPayload) -> Admission:
        """Check the key's job limits and the queue cap for ``payload``, and take them.

        Raises :class:`RateLimited` / :class:`QueueFull` naming the limit, or
        :class:`InvalidRequest` for ``n`` above the key's whole per-minute allowance (it could
        never be admitted: retrying would not help).
        """
        limits = principal.limits
        per_minute = limits.images_per_minute or 0
        if 0 < per_minute < payload.n:
            raise InvalidRequest(
                f"n is {payload.n}; this key may generate at most {per_minute} images per minute", param="n"
            )
        keys = [
            self._live_key(principal.key_id),
            f"{self._prefix}:images:{principal.key_id}",
            self.jobs.queue(payload.model, payload.priority).key,
            self.tenant_index_key(principal.tenant),
        ]
        args: list[str | int | float] = [
            payload.job_id,
            payload.n,
            limits.max_concurrent_jobs or 0,
            per_minute,
            self.settings.max_queue_depth,
            Job.redis_job_namespace_prefix,
            self.grace_s,
            self.settings.result_ttl_s + self.settings.job_timeout_s,
            TENANT_INDEX_CAP,
        ]
        with redis_errors():
            limit, wait = self._admit(keys=keys, args=args)
        limit = limit.decode() if isinstance(limit, bytes) else str(limit)
        if limit == "queue_depth":
            raise QueueFull(
                f"the {payload.priority} queue of model {payload.model!r} is full "
                f"({self.settings.max_queue_depth} jobs); "
                f"retry in {QUEUE_FULL_RETRY_S} s",
                param="queue_depth",
                retry_after_s=QUEUE_FULL_RETRY_S,
            )
        if limit == "concurrent_jobs":
            raise RateLimited(
                f"this key already has {limits.max_concurrent_jobs} queued or running jobs, its limit; "
                "retry when one ends",
                param="concurrent_jobs",
                retry_after_s=CONCURRENCY_RETRY_S,
            )
        if limit == "images_per_minute":
            raise RateLimited(
                f"this key may generate {per_minute} images per minute; retry in {int(wait)} s",
                param="images_per_minute",
                retry_after_s=int(wait),
            )
        return Admission(key_id=principal.key_id, tenant=principal.tenant, job_id=payload.job_id)

    def release(self, admission: Admission) -> None:
        """Forget an admitted job that was never enqueued (its image tokens are not refunded)."""
        with redis_errors(), self.connection.pipeline() as pipe:
            pipe.zrem(self._live_key(admission.key_id), admission.job_id)
            pipe.zrem(self.tenant_index_key(admission.tenant), admission.job_id)
            pipe.execute()

    def live_jobs(self, key_id: str) -> int:
        """Jobs currently counted against the key's concurrency limit (before pruning)."""
        with redis_errors():
            return int(self.connection.zcard(self._live_key(key_id)))

    def recent_job_ids(self, tenant: str, limit: int) -> list[str]:
        """The tenant's newest admitted job ids, newest first."""
        with redis_errors():
            ids = self.connection.zrevrange(self.tenant_index_key(tenant), 0, limit - 1)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
