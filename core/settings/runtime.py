"""Job and worker runtime settings: queues, timeouts, retention and the liveness machinery
that keeps a dead worker from losing a job."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from core.settings.base import SettingsGroup, shown_default


class RuntimeSettings(SettingsGroup):
    """The life of a job and of the worker that runs it: queue names, how long a job may run
    and stays readable, how often a worker that dies mid-job gets its jobs re-run, heartbeats,
    the reaper that finds dead workers' jobs, upload retries and the worker's name.

    Read by the worker and the API (queue names, how long results and Idempotency-Keys last,
    which workers count as live).
    """

    section: ClassVar[str] = "Jobs and worker runtime"

    queue_prefix: str = Field(
        default="sfumato", description="Prefix of the Redis queue names (one queue per model: `<prefix>:<model>`)."
    )
    job_timeout_s: int = Field(default=600, ge=1, description="Longest a job may run on a worker.")
    result_ttl_s: int = Field(default=24 * 3600, ge=60, description="How long finished jobs stay readable.")
    idempotency_ttl_s: int = Field(
        default=24 * 3600, ge=60, description="How long an `Idempotency-Key` maps to its job."
    )
    job_attempts: int = Field(
        default=3, ge=1, le=20, description="Runs a job gets when its worker dies (kill -9, OOM-kill, node loss)."
    )
    heartbeat_interval_s: float = Field(
        default=3.0, gt=0, le=60, description="How often a busy worker proves its jobs are alive."
    )
    execution_ttl_s: int = Field(
        default=15,
        ge=2,
        le=600,
        description=(
            "A running job whose worker missed heartbeats this long is re-queued (not within this"
            " plus one heartbeat interval after a Redis outage: an outage is not a worker death)."
        ),
    )
    reaper_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How often workers (of every model) and API replicas look for jobs of dead workers.",
    )
    worker_ttl_s: int = Field(
        default=30, ge=16, le=3600, description="Worker registration TTL (also bounds the blocking dequeue)."
    )
    storage_retry_budget_s: float = Field(
        default=60.0, ge=0, description="How long uploads are retried (with backoff) before a job fails."
    )
    worker_name: str | None = Field(
        default=None,
        description="This worker's name in Redis (unique per worker process).",
        json_schema_extra=shown_default("`<host>-<pid>`"),
    )
