"""Webhooks in Redis: registration at submit, the delivery schedule, and per-tenant secrets.

Design, and why:

* **The API notices endings, not the worker.** A job can end in many places: a worker
  completes or fails it, a worker or the API cancels it, RQ's reaper fails it for a dead
  worker, a deadline fails it before it runs. Rather than a hook in each, a job with a webhook
  is registered at submit in ``{prefix}:webhooks:pending`` (a sorted set), and a sweep (one Lua
  script, atomic) moves every pending job whose RQ status is final to ``{prefix}:webhooks:due``.
  Nothing is lost if every API process is down for a while: the sweep finds the endings later.
* **One schedule for first attempts and retries.** ``due`` is a sorted set scored by the time
  the next attempt may start. A sender *claims* due entries by pushing their score a lease
  into the future (Lua, atomic), so API replicas share the work and never send the same
  attempt twice; if a replica dies mid-attempt, its lease runs out and another one retries.
  A failed attempt is re-scored with exponential backoff; success or the last attempt removes
  it. (A Redis stream with a consumer group would add XAUTOCLAIM for dead consumers and still
  need a sorted set for delayed retries: one sorted set does both.)
* **Deliveries are at least once.** Every attempt of one delivery has the same ``webhook-id``;
  receivers dedupe on it.

The record of a job's webhook, ``{prefix}:webhook:{job_id}`` (a hash), is what
``GET /v1/images/{id}`` shows as ``webhook``: URL, events, state, attempts, last status.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import redis
from rq.job import Job

from core.config import Settings
from core.errors import UnsafeUrl
from core.jobs import redis_errors
from core.safe_fetch import FetchPolicy, check_url
from core.schemas import JobPayload, WebhookEvent, WebhookView
from core.webhook_signature import new_secret

ALL_EVENTS: tuple[WebhookEvent, ...] = ("succeeded", "failed", "canceled")
#: RQ status -> the event it ends a job with.
EVENT_OF_STATUS: dict[str, WebhookEvent] = {
    "finished": "succeeded",
    "failed": "failed",
    "stopped": "failed",
    "canceled": "canceled",
}
#: A registered job whose RQ job does not exist after this long (never enqueued, expired) is dropped.
VANISHED_GRACE_S = 120
#: How long a claimed attempt is ours before another sender may take it over.
LEASE_S = 120
MAX_BACKOFF_S = 3600.0
#: Answers worth another attempt: no answer at all (None), timeouts, throttling, server errors.
RETRYABLE = frozenset({408, 425, 429})

_SWEEP = """
local moved = 0
local now = tonumber(ARGV[1])
local entries = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local id = entries[i]
  local status = redis.call('HGET', ARGV[4] .. id, 'status')
  local record = ARGV[5] .. id
  if status == 'finished' or status == 'failed' or status == 'stopped' or status == 'canceled' then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], 'NX', now, id)
    redis.call('HSET', record, 'state', 'pending', 'job_status', status)
    moved = moved + 1
  elseif (not status) and tonumber(entries[i + 1]) < now - tonumber(ARGV[2]) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HSET', record, 'state', 'skipped', 'last_error', 'the job no longer exists')
  end
end
return moved
"""

_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
end
return ids
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def backoff_s(settings: Settings, attempts: int) -> float:
    """Delay before attempt ``attempts + 1``: the base, doubling, capped at an hour."""
    return float(min(settings.webhook_retry_base_s * 2 ** max(0, attempts - 1), MAX_BACKOFF_S))


def retryable(status: int | None) -> bool:
    return status is None or status in RETRYABLE or status >= 500


class WebhookStore:
    """Webhook registrations, schedule and secrets of one deployment (Settings + Redis)."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        prefix = settings.queue_prefix
        self.pending_key = f"{prefix}:webhooks:pending"
        self.due_key = f"{prefix}:webhooks:due"
        self._record_prefix = f"{prefix}:webhook:"
        self._sweep = connection.register_script(_SWEEP)
        self._claim = connection.register_script(_CLAIM)

    # --- submit side -----------------------------------------------------------------------
    def policy(self) -> FetchPolicy:
        """The fetch limits of a delivery; loopback only when the operator allows it (tests)."""
        return FetchPolicy(
            max_bytes=64 * 1024,
            timeout_s=self.settings.webhook_timeout_s,
            allow_loopback=self.settings.webhook_allow_loopback,
        )

    def check_url(self, url: str) -> None:
        """Refuse a ``webhook_url`` the deliveries could never reach safely (422 at submit)."""
        try:
            check_url(url, policy=self.policy())
        except UnsafeUrl as exc:
            raise UnsafeUrl(f"webhook_url: {exc.message}", param="webhook_url") from None

    def record_key(self, job_id: str) -> str:
        return self._record_prefix + job_id

    def register(self, payload: JobPayload, url: str, events: list[WebhookEvent] | None) -> None:
        """Remember ``payload``'s webhook before the job is enqueued (so no ending is missed)."""
        record = {
            "url": url,
            "events": ",".join(events or ALL_EVENTS),
            "tenant": payload.tenant,
            "delivery_id": "msg_" + secrets.token_hex(16),
            "state": "waiting",
            "attempts": 0,
            "created_at": time.time(),
        }
        ttl = self.settings.result_ttl_s + self.settings.job_timeout_s + 2 * 86400
        key = self.record_key(payload.job_id)
        with redis_errors(), self.connection.pipeline() as pipe:
            pipe.hset(key, mapping=record)  # type: ignore[arg-type]
            pipe.expire(key, ttl)
            pipe.zadd(self.pending_key, {payload.job_id: time.time()})
            pipe.execute()

    def forget(self, job_id: str) -> None:
        """Undo :meth:`register` for a job that was never enqueued."""
        with redis_errors(), self.connection.pipeline() as pipe:
            pipe.zrem(self.pending_key, job_id)
            pipe.delete(self.record_key(job_id))
            pipe.execute()

    def view(self, job_id: str) -> WebhookView | None:
        """The job's webhook as clients see it; None when it has none."""
        record = self.record(job_id)
        if not record or "url" not in record:
            return None
        return WebhookView(
            url=record["url"],
            events=[e for e in record.get("events", "").split(",") if e],  # type: ignore[misc]
            state=record.get("state", "waiting"),  # type: ignore[arg-type]
            attempts=int(record.get("attempts", 0)),
            last_status=int(record["last_status"]) if record.get("last_status") else None,
            last_error=record.get("last_error") or None,
            last_attempt_at=float(record["last_attempt_at"]) if record.get("last_attempt_at") else None,
            delivered_at=float(record["delivered_at"]) if record.get("delivered_at") else None,
        )

    def record(self, job_id: str) -> dict[str, str]:
        with redis_errors():
            raw: Any = self.connection.hgetall(self.record_key(job_id))
        return {_text(k): _text(v) for k, v in (raw or {}).items()}

    # --- sender side -------------------------------------------------------------------------
    def sweep(self, now: float | None = None, limit: int = 5000) -> int:
        """Move jobs that have ended from pending to due; returns how many moved."""
        args: list[str | float] = [
            now or time.time(),
            VANISHED_GRACE_S,
            limit,
            Job.redis_job_namespace_prefix,
            self._record_prefix,
        ]
        with redis_errors():
            return int(self._sweep(keys=[self.pending_key, self.due_key], args=args))

    def claim(self, now: float | None = None, limit: int = 16) -> list[str]:
        """Job ids whose next attempt is due, leased to the caller for :data:`LEASE_S`."""
        with redis_errors():
            ids: Any = self._claim(keys=[self.due_key], args=[now or time.time(), LEASE_S, limit])
        return [_text(i) for i in ids or ()]

    def skip(self, job_id: str, reason: str) -> None:
        """No delivery for this job (its ending is not in ``webhook_events``, or it is gone)."""
        with redis_errors(), self.connection.pipeline() as pipe:
            pipe.zrem(self.due_key, job_id)
            pipe.hset(self.record_key(job_id), mapping={"state": "skipped", "last_error": reason})
            pipe.execute()

    def attempted(self, job_id: str, status: int | None, error: str | None, now: float | None = None) -> str:
        """Record one attempt's outcome and schedule what follows; returns the new state."""
        now = now or time.time()
        key = self.record_key(job_id)
        with redis_errors():
            attempts = int(self.connection.hincrby(key, "attempts", 1))
            fields: dict[str, str | float] = {
                "last_attempt_at": now,
                "last_status": status or "",
                "last_error": error or "",
            }
            if status is not None and 200 <= status < 300:
                state, fields["delivered_at"] = "delivered", now
            elif retryable(status) and attempts < self.settings.webhook_max_attempts:
                state = "retrying"
            else:
                state = "failed"
            fields["state"] = state
            with self.connection.pipeline() as pipe:
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                if state == "retrying":
                    pipe.zadd(self.due_key, {job_id: now + backoff_s(self.settings, attempts)}, xx=True)
                else:
                    pipe.zrem(self.due_key, job_id)
                pipe.execute()
        return state

    # --- secrets -----------------------------------------------------------------------------
    def secret(self, tenant: str, *, rotate: bool = False) -> str:
        """The tenant's signing secret (``whsec_...``), made on first use; a new one if ``rotate``.

        Stored in Redis as is: the API must be able to sign with it (unlike API keys, which
        are only ever compared and so are stored hashed).
        """
        key = f"{self.settings.queue_prefix}:webhook-secret:{tenant}"
        fresh = new_secret(secrets.token_bytes(32))
        with redis_errors():
            if rotate:
                self.connection.set(key, fresh)
                return fresh
            self.connection.set(key, fresh, nx=True)
            stored: Any = self.connection.get(key)
        return _text(stored)
