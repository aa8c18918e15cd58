"""Job and worker runtime settings: queues, timeouts, retention and the liveness machinery
that keeps a dead worker from losing a job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from core.settings.base import SettingsGroup, shown_default

#: Most batch-size buckets a worker compiles graphs for (each costs compile time and memory).
MAX_COMPILE_BUCKETS = 8


class RuntimeSettings(SettingsGroup):
    """The life of a job and of the worker that runs it: queue names, how long a job may run
    and stays readable, how often a worker that dies mid-job gets its jobs re-run, heartbeats,
    the reaper that finds dead workers' jobs, upload retries, the worker's name and its
    compiled fast path (``SFUMATO_COMPILE*``, worker/pipelines/fast_path.py).

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

    # --- the compiled fast path (worker/pipelines/fast_path.py, docs/operations/compilation.md) ---
    compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "Compile the UNet and VAE decoder with `torch.compile` during warm-up (static shapes per batch"
            " bucket and size, before the worker reports ready). `auto`: on for CUDA workers, off on CPU"
            " (minutes of compiling per shape there). Exact, LoRA and ControlNet batches always run eager."
        ),
    )
    compile_buckets: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(1, 2, 4, 8),
        description=(
            "Batch sizes (images per call, comma-separated) compiled at warm-up; a batch is padded up to the"
            " next bucket (extra rows are dropped). Larger batches compile once on first use."
        ),
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        default="default",
        description="`torch.compile` mode; `reduce-overhead` adds CUDA graphs (CUDA only, measure before use).",
    )
    compile_freezing: bool = Field(
        default=True,
        description=(
            "Inductor freezing: weights become constants of the compiled graph (faster, about one more copy"
            " of the UNet in memory). Safe with LoRAs because adapter batches run eager."
        ),
    )
    compile_vae: bool = Field(default=True, description="Also compile the VAE decoder.")
    compile_cache_dir: Path | None = Field(
        default=None,
        description=(
            "Inductor's cache (`TORCHINDUCTOR_CACHE_DIR`): put it on the model volume so a restarted worker"
            " reuses compiled kernels instead of compiling for minutes."
        ),
        json_schema_extra=shown_default("`data_dir/compile-cache`"),
    )
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field(
        default="inductor",
        description=(
            "`torch.compile` backend. `eager` and `aot_eager` trace and guard without generating code:"
            " for debugging and for tests of the machinery, never faster."
        ),
    )

    @field_validator("compile_buckets", mode="before")
    @classmethod
    def _parse_buckets(cls, value: Any) -> Any:
        """Accept ``1,2,4,8`` (the environment's form) as well as a sequence; sorted, unique."""
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",") if part.strip()]
            try:
                value = [int(part) for part in parts]
            except ValueError as exc:
                raise ValueError(f"compile_buckets must be comma-separated integers, got {value!r}") from exc
        buckets = sorted(set(value))
        if not buckets or buckets[0] < 1 or len(buckets) > MAX_COMPILE_BUCKETS:
            raise ValueError(f"compile_buckets needs 1 to {MAX_COMPILE_BUCKETS} sizes, each at least 1")
        return tuple(buckets)
