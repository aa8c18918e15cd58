"""``?wait=`` / ``Prefer: wait=N``: hold a request open until the job ends or time runs out."""

from __future__ import annotations

import asyncio
import re
import time

from starlette.concurrency import run_in_threadpool

from core.jobs import JobRecord, JobStore

FINAL_STATES = frozenset({"succeeded", "failed", "canceled"})
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def requested_wait(query_wait: float | None, prefer_header: str | None, max_wait_s: float) -> float:
    """Seconds to wait: the query parameter wins over RFC 7240 ``Prefer: wait=N``; capped."""
    wait = query_wait
    if wait is None and prefer_header:
        match = _PREFER_WAIT.search(prefer_header)
        wait = float(match.group(1)) if match else None
    return max(0.0, min(wait or 0.0, max_wait_s))


async def wait_for_final(jobs: JobStore, job_id: str, tenant: str, timeout_s: float) -> JobRecord:
    """Poll until the job is final or ``timeout_s`` passes; returns the last record seen.

    Polling starts fast (tiny jobs finish in well under a second) and backs off to 250 ms.
    """
    deadline = time.monotonic() + timeout_s
    interval = 0.05
    while True:
        record = await run_in_threadpool(jobs.get, job_id, tenant)
        remaining = deadline - time.monotonic()
        if record.status in FINAL_STATES or remaining <= 0:
            return record
        await asyncio.sleep(min(interval, remaining))
        interval = min(interval * 1.5, 0.25)
