"""The caller's current A1111 job: what ``GET /progress``, ``POST /interrupt`` and ``POST /skip`` act on.

A1111 runs one job at a time per server, so "the current job" is global there. Here it is per
API key: while a ``/sdapi/v1`` txt2img/img2img call waits, the job's id is kept under the key
(the anonymous caller when keys are off), and removed when the call ends, only if it still
names that job (a later call of the same key may have replaced it: the newest call is the
current one). The entry expires on its own, so a crashed API process leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from core.apikeys import Principal
from core.config import Settings
from core.errors import JobConflict, JobNotFound
from core.jobs import JobRecord, JobStore, redis_errors
from core.progress import latest_progress, queue_position

#: Deletes the key only while it still holds this call's job id (compare-and-delete).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
#: Seconds the entry outlives the longest wait (a crashed API process's entry still expires).
_MARGIN_S = 60


def current_key(settings: Settings, principal: Principal) -> str:
    return f"{settings.queue_prefix}:a1111:current:{principal.tenant}:{principal.key_id}"


class CurrentJobs:
    """Remember, read and stop each caller's current job (blocking: Redis)."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def remember(self, principal: Principal, job_id: str, wait_s: float) -> None:
        with redis_errors():
            self.connection.set(current_key(self.settings, principal), job_id, ex=int(wait_s) + _MARGIN_S)

    def forget(self, principal: Principal, job_id: str) -> None:
        with redis_errors():
            self.connection.eval(_RELEASE, 1, current_key(self.settings, principal), job_id)

    @contextmanager
    def tracking(self, principal: Principal, job_id: str, wait_s: float) -> Iterator[None]:
        self.remember(principal, job_id, wait_s)
        try:
            yield
        finally:
            self.forget(principal, job_id)

    def current(self, principal: Principal) -> str | None:
        with redis_errors():
            value: Any = self.connection.get(current_key(self.settings, principal))
        return value.decode() if isinstance(value, bytes) else value

    def stop(self, jobs: JobStore, principal: Principal) -> str | None:
        """Cancel the caller's current job (queued: removed; running: stops at the next step).
        Returns its id; None when there is none or it has just ended (A1111 answers 200 then too)."""
        job_id = self.current(principal)
        if job_id is None:
            return None
        try:
            jobs.cancel(job_id, principal.tenant)
        except (JobConflict, JobNotFound):
            return None
        return job_id


def _state(step: int = 0, total: int = 0, job: str = "", count: int = 0) -> dict[str, Any]:
    return {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": job,
        "job_count": count,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": step,
        "sampling_steps": total,
    }


IDLE: dict[str, Any] = {
    "progress": 0.0,
    "eta_relative": 0.0,
    "state": _state(),
    "current_image": None,
    "textinfo": None,
    "current_task": None,
}


def _raw_base64(data_url: str | None) -> str | None:
    """A1111's ``current_image`` is plain base64 PNG; ours is a data URL."""
    if not data_url:
        return None
    return data_url.split(",", 1)[1] if data_url.startswith("data:") else data_url


def progress_view(
    connection: redis.Redis, settings: Settings, record: JobRecord, with_image: bool = True
) -> dict[str, Any]:
    """A1111's ``GET /progress`` answer for a job: fraction done, seconds left, the preview."""
    payload = record.payload
    if record.status == "queued":
        position = queue_position(connection, settings, payload.model, payload.job_id, payload.priority)
        ahead = "" if position is None else f": {position} job(s) ahead"
        return {
            **IDLE,
            "state": _state(0, payload.steps, payload.job_id, 1),
            "textinfo": f"Waiting in queue{ahead}",
            "current_task": payload.job_id,
        }
    if record.status != "running":
        return IDLE
    progress = latest_progress(connection, settings, payload.job_id)
    if progress is None:
        return {
            **IDLE,
            "state": _state(0, payload.steps, payload.job_id, 1),
            "textinfo": "Starting",
            "current_task": payload.job_id,
        }
    return {
        "progress": round(progress.step / progress.total, 4) if progress.total else 0.0,
        "eta_relative": progress.eta_s or 0.0,
        "state": _state(progress.step, progress.total, payload.job_id, 1),
        "current_image": _raw_base64(progress.preview) if with_image else None,
        "textinfo": f"Sampling step {progress.step}/{progress.total}",
        "current_task": payload.job_id,
    }
