"""Which workers are alive for which model, so ``GET /v1/models`` can say who serves what.

Each worker refreshes its entry (a sorted-set member scored by its expiry time) while it runs;
an entry that is not refreshed simply ages out, so a killed worker stops being counted
without anyone cleaning up after it.
"""

from __future__ import annotations

import time

import redis

from core.config import Settings


def _key(settings: Settings, model_id: str) -> str:
    return f"{settings.queue_prefix}:workers:{model_id}"


def announce(connection: redis.Redis, settings: Settings, model_id: str, worker_name: str, ttl_s: float) -> None:
    """Mark ``worker_name`` as serving ``model_id`` for the next ``ttl_s`` seconds."""
    now = time.time()
    key = _key(settings, model_id)
    with connection.pipeline() as pipe:
        pipe.zadd(key, {worker_name: now + ttl_s})
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.expire(key, int(ttl_s) + 60)
        pipe.execute()


def withdraw(connection: redis.Redis, settings: Settings, model_id: str, worker_name: str) -> None:
    """Remove a worker that is shutting down cleanly."""
    connection.zrem(_key(settings, model_id), worker_name)


def live_workers(connection: redis.Redis, settings: Settings, model_id: str) -> int:
    """How many workers have announced ``model_id`` and not yet expired."""
    return int(connection.zcount(_key(settings, model_id), time.time(), "+inf"))
