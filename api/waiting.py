"""``?wait=`` / ``Prefer: wait=N``: hold a request open until the job ends or time runs out."""

from __future__ import annotations

import re
import time
from typing import Any

import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from core.config import Settings
from core.jobs import JobRecord, JobStore, redis_errors, results_key

FINAL_STATES = frozenset({"succeeded", "failed", "canceled"})
_BLOCK_S = 1.0  # longest single XREAD: bounds how late a cancellation is noticed
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def requested_wait(query_wait: float | None, prefer_header: str | None, max_wait_s: float) -> float:
    """Seconds to wait: the query parameter wins over RFC 7240 ``Prefer: wait=N``; capped."""
    wait = query_wait
    if wait is None and prefer_header:
        match = _PREFER_WAIT.search(prefer_header)
        wait = float(match.group(1)) if match else None
    return max(0.0, min(wait or 0.0, max_wait_s))


class CompletionWaiter:
    """Waits for jobs to end without polling: RQ appends every result (success or failure) to a
    per-job Redis stream, and ``XREAD BLOCK`` on it wakes the waiter the moment one lands.

    Canceled jobs write no result, so the state is also re-read at least once a second.
    """

    def __init__(self, settings: Settings) -> None:
        self._redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s + _BLOCK_S,
        )

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def wait(self, jobs: JobStore, job_id: str, tenant: str, timeout_s: float) -> JobRecord:
        """The job's record once it is final, or the last one seen when ``timeout_s`` runs out."""
        deadline = time.monotonic() + timeout_s
        stream, last_id = results_key(job_id), "0-0"
        while True:
            record = await run_in_threadpool(jobs.get, job_id, tenant)
            remaining = deadline - time.monotonic()
            if record.status in FINAL_STATES or remaining <= 0:
                return record
            block_ms = max(1, int(min(remaining, _BLOCK_S) * 1000))
            with redis_errors():
                entries: Any = await self._redis.xread({stream: last_id}, block=block_ms)
            for _stream, messages in entries or ():
                if messages:
                    last_id = messages[-1][0]  # wait for newer results only (a retried job)
