"""The one Settings object for the API, the worker and the dev stack.

Every knob is an environment variable with the prefix ``SFUMATO_`` (``SFUMATO_REDIS_URL``,
``SFUMATO_MAX_STEPS`` ...). Settings are built once by :func:`get_settings` and never at import
time, so tests can set the environment and call ``get_settings.cache_clear()``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".cache" / "sfumato"


class Settings(BaseSettings):
    """Runtime configuration. Field docs are the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="SFUMATO_", extra="ignore")

    # --- infrastructure -----------------------------------------------------------------
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis holding the job queue.")
    redis_timeout_s: float = Field(default=2.0, gt=0, description="Socket connect/read timeout towards Redis.")
    data_dir: Path = Field(default_factory=_default_data_dir, description="Caches and local images.")

    # --- object storage -----------------------------------------------------------------
    storage: Literal["auto", "local", "s3"] = Field(
        default="auto", description="'auto' uses S3 when SFUMATO_S3_BUCKET is set, else local disk."
    )
    s3_bucket: str | None = Field(default=None, description="Bucket for generated images.")
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, SeaweedFS, R2...).")
    s3_region: str = Field(default="us-east-1", description="S3 region used for signing.")
    s3_access_key_id: str | None = Field(default=None, description="S3 access key (else the AWS chain).")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key.")
    s3_path_style: bool = Field(default=True, description="Path-style addressing (needed by most self-hosted S3).")
    s3_create_bucket: bool = Field(default=False, description="Create the bucket at start-up if missing.")
    local_storage_dir: Path | None = Field(default=None, description="Local image store (default data_dir/images).")
    url_signing_key: SecretStr | None = Field(
        default=None, description="HMAC key for local-disk image URLs; shared by all API replicas."
    )
    url_expiry_s: int = Field(default=900, ge=1, le=7 * 24 * 3600, description="Lifetime of image URLs.")
    public_url: str | None = Field(default=None, description="Base URL clients use to reach the API.")

    # --- model --------------------------------------------------------------------------
    model: str = Field(
        default="tiny",
        description="'tiny' (random weights, for tests), 'shapes' (built-in model that draws simple shapes; "
        "make run's default), 'tiny-sdxl' (built-in tiny SDXL), a local diffusers folder or a hub id.",
    )
    model_id: str | None = Field(default=None, description="Public model name (default: derived from model).")
    refiner: str | None = Field(
        default=None,
        description="SDXL refiner of SFUMATO_MODEL (an SDXL model): 'tiny-sdxl-refiner', a local diffusers "
        "folder or a hub id; only its UNet is loaded (text_encoder_2 and VAE are the base's). Unset: none.",
    )
    models_file: Path | None = Field(
        default=None,
        description='TOML model registry (README "Models"); replaces SFUMATO_MODEL/SFUMATO_MODEL_ID when set.',
    )
    worker_model: str | None = Field(
        default=None, description="Registry model id this worker serves (default: the registry's first model)."
    )
    queue_without_workers: bool | None = Field(
        default=None,
        description="Queue requests for a model no live worker serves (scale from zero) instead of 503 no_worker. "
        "Default: true without SFUMATO_MODELS_FILE, false with it.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where the worker runs the model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto': float16 on CUDA, float32 on CPU."
    )
    attention: Literal["auto", "xformers", "sdpa", "sliced"] = Field(
        default="auto", description="'auto': xformers on CUDA when importable, else PyTorch SDPA."
    )
    torch_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads on CPU.")

    # --- LoRA (see README "LoRA") ---------------------------------------------------------
    lora_dir: Path | None = Field(
        default=None, description="Folder of <name>.safetensors LoRAs, read by API and worker (default data_dir/loras)."
    )
    max_loras: int = Field(default=4, ge=0, le=16, description="Most LoRAs one request may combine; 0 = LoRAs off.")
    lora_min_scale: float = Field(default=-2.0, ge=-10, le=0, description="Smallest LoRA scale a request may ask for.")
    lora_max_scale: float = Field(default=2.0, ge=0, le=10, description="Largest LoRA scale a request may ask for.")
    lora_cache_size: int = Field(default=8, ge=1, le=256, description="LoRA adapters a worker keeps loaded (LRU).")
    lora_cache_bytes: int = Field(
        default=1024 * 1024 * 1024, ge=1024, description="Bytes of loaded LoRA weights a worker keeps (LRU)."
    )

    # --- ControlNet (see README "ControlNet") ---------------------------------------------
    max_controlnets: int = Field(
        default=2, ge=0, le=8, description="Most ControlNets one request may combine; 0 = ControlNet off."
    )
    controlnet_cache_size: int = Field(
        default=2, ge=1, le=64, description="ControlNet models a worker keeps loaded (LRU by count)."
    )

    # --- request limits (enforced by the API before anything is enqueued) ----------------
    max_prompt_chars: int = Field(default=2000, ge=1, description="Longest prompt / negative prompt.")
    min_size: int = Field(default=64, ge=8, description="Smallest width/height in pixels.")
    max_size: int = Field(default=1024, ge=8, description="Largest width/height in pixels (models may lower it).")
    max_pixels: int = Field(default=1024 * 1024, ge=64, description="Largest width x height of one image.")
    max_steps: int = Field(default=100, ge=1, description="Most denoising steps.")
    max_n: int = Field(default=8, ge=1, description="Most images per request.")
    min_guidance: float = Field(default=0.0, description="Smallest guidance_scale.")
    max_guidance: float = Field(default=30.0, description="Largest guidance_scale.")
    max_clip_skip: int = Field(default=4, ge=0, description="Largest clip_skip.")
    max_upload_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Largest decoded upload (image/mask).")
    max_upload_pixels: int = Field(default=4096 * 4096, ge=64, description="Largest declared upload dimensions.")
    max_wait_s: float = Field(default=60.0, ge=0, description="Longest ?wait= a client may ask for.")

    # --- jobs ---------------------------------------------------------------------------
    job_timeout_s: int = Field(default=600, ge=1, description="Longest a job may run on a worker.")
    result_ttl_s: int = Field(default=24 * 3600, ge=60, description="How long finished jobs stay readable.")
    queue_prefix: str = Field(default="sfumato", description="Prefix of the Redis queue names.")

    # --- API ----------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="API bind address.")
    api_port: int = Field(default=8000, ge=1, le=65535, description="API port.")

    # --- worker -------------------------------------------------------------------------
    worker_name: str | None = Field(default=None, description="Worker name in Redis (default: host + pid).")
    log_level: str = Field(default="INFO", description="Log level.")

    # --- batching -----------------------------------------------------------------------
    max_batch: int = Field(
        default=8, ge=1, le=64, description="Most images in one pipeline call (a request with n=4 fills 4 slots)."
    )
    max_wait_ms: int = Field(
        default=25, ge=0, le=10_000, description="Longest a batch waits for partners once its oldest job is taken."
    )
    adaptive_wait: bool = Field(
        default=True,
        description="Skip the partner wait while recent waits found no partner (one request at a time); "
        "probe now and then. Queued partners are always claimed; max_wait_ms still bounds every wait.",
    )
    batch_scan_depth: int = Field(
        default=64, ge=1, le=10_000, description="How far down the queue a worker looks for batch partners."
    )
    prompt_cache_size: int = Field(default=512, ge=0, description="Text-encoder outputs kept (LRU entries).")
    upload_stage_depth: int = Field(
        default=2, ge=0, le=16, description="Finished batches encoded/uploaded in the background (0: inline)."
    )

    # --- reliability --------------------------------------------------------------------
    job_attempts: int = Field(
        default=3, ge=1, le=20, description="Runs a job gets when its worker dies (kill -9, OOM-kill, node loss)."
    )
    heartbeat_interval_s: float = Field(
        default=3.0, gt=0, le=60, description="How often a busy worker proves its jobs are alive."
    )
    execution_ttl_s: int = Field(
        default=15, ge=2, le=600, description="A running job whose worker missed heartbeats this long is re-queued."
    )
    reaper_interval_s: float = Field(
        default=5.0, gt=0, le=300, description="How often workers look for jobs of dead workers."
    )
    worker_ttl_s: int = Field(
        default=30, ge=16, le=3600, description="Worker registration TTL (also bounds the blocking dequeue)."
    )
    max_timeout_s: int = Field(
        default=24 * 3600, ge=1, description="Largest timeout_s (start deadline) a request may carry."
    )
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60, description="How long an Idempotency-Key maps to its job.")
    storage_retry_budget_s: float = Field(
        default=60.0, ge=0, description="How long uploads are retried (with backoff) before a job fails."
    )

    # --- security (API keys, quotas, hardening; see README "Security") -------------------
    auth_enabled: bool = Field(
        default=True, description="Require an API key on /v1 routes. Off only in `make run`'s dev mode."
    )
    api_keys_file: Path | None = Field(
        default=None, description="JSON file of API keys (plaintext or SHA-256) registered at API start-up."
    )
    rate_limit_rps: float = Field(
        default=20.0, ge=0, description="Requests per second per key (token bucket refill); 0 = no limit."
    )
    rate_limit_burst: int = Field(default=40, ge=1, description="Requests a key may send at once (bucket size).")
    images_per_minute: int = Field(default=120, ge=0, description="Images per minute per key; 0 = no limit.")
    max_concurrent_jobs: int = Field(default=16, ge=0, description="Queued + running jobs per key; 0 = no limit.")
    max_queue_depth: int = Field(
        default=1000, ge=0, description="Queued jobs per model before new ones get 429 queue_full; 0 = no cap."
    )
    max_body_bytes: int | None = Field(
        default=None, ge=1024, description="Largest request body (413 above); default: two maximal uploads + 64 KiB."
    )
    cors_allow_origins: str = Field(
        default="", description="Comma-separated origins allowed by CORS ('*' for any); empty = CORS off."
    )
    hsts_max_age_s: int = Field(
        default=0, ge=0, description="Strict-Transport-Security max-age; 0 = no header (set it behind TLS)."
    )
    docs_enabled: bool = Field(default=True, description="Serve /docs and /openapi.json (no secrets in them).")
    allow_pickle_weights: bool = Field(
        default=False, description="Let the worker load pickle (.bin/.ckpt) weights. Unsafe: unpickling runs code."
    )

    # --- observability (metrics, logs; see README "Observability") ------------------------
    log_format: Literal["json", "text"] = Field(
        default="json", description="Log lines: one JSON object per event, or 'text' for people (make run)."
    )
    metrics_enabled: bool = Field(
        default=True, description="Record Prometheus metrics and serve them on /metrics (API and workers)."
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1", description="Bind address of a worker's /metrics and /healthz (0.0.0.0 in a pod)."
    )
    worker_metrics_port: int = Field(
        default=9450, ge=0, le=65535, description="Port of a worker's /metrics and /healthz; 0 = no HTTP server."
    )
    api_workers: int = Field(
        default=1, ge=1, le=64, description="uvicorn worker processes of the API (>1: metrics in multiprocess mode)."
    )

    # --- client side: progress, live events, webhooks, OpenAI compatibility (README "SDK") --
    progress_interval_s: float = Field(
        default=0.25, ge=0, le=60, description="Least time between two progress updates a worker publishes per batch."
    )
    preview_interval_s: float = Field(
        default=1.0, ge=0, le=600, description="Least time between two previews of a job that asked for them."
    )
    events_poll_s: float = Field(
        default=0.5, gt=0, le=10, description="How often an event stream re-reads its job's state and queue position."
    )
    events_max_s: float = Field(default=3600.0, gt=0, description="Longest an event stream (SSE) stays open.")
    webhook_allow_loopback: bool = Field(
        default=False, description="Let webhooks reach 127.0.0.1/::1. For tests only; private addresses stay refused."
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=50, description="Deliveries tried per webhook.")
    webhook_retry_base_s: float = Field(
        default=5.0, gt=0, le=3600, description="First retry delay of a failed delivery; doubles each time."
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120, description="Time limit of one delivery.")
    webhook_poll_s: float = Field(
        default=1.0, gt=0, le=60, description="How often the API looks for finished webhook jobs and due deliveries."
    )
    openai_timeout_s: float = Field(
        default=300.0, gt=0, description="Longest POST /v1/images/generations waits for its images (then 504)."
    )

    @property
    def resolved_max_body_bytes(self) -> int:
        """The body limit in force: explicit, or room for an image, a mask and
        ``max_controlnets`` control images at the upload limit."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return (2 + self.max_controlnets) * (self.max_upload_bytes * 4 // 3 + 4) + 64 * 1024

    @property
    def cors_origins(self) -> list[str]:
        """SFUMATO_CORS_ALLOW_ORIGINS as a list (empty: CORS is off)."""
        return [o.strip() for o in self.cors_allow_origins.split(",") if o.strip()]

    @property
    def storage_backend(self) -> Literal["local", "s3"]:
        """The backend in force once 'auto' is resolved."""
        if self.storage == "auto":
            return "s3" if self.s3_bucket else "local"
        return self.storage

    @property
    def resolved_lora_dir(self) -> Path:
        """Where LoRAs are listed (API) and loaded (worker): explicit, or data_dir/loras."""
        return self.lora_dir or self.data_dir / "loras"

    @property
    def resolved_local_storage_dir(self) -> Path:
        return self.local_storage_dir or self.data_dir / "images"

    @property
    def resolved_queue_without_workers(self) -> bool:
        """Whether a request for a model with no live worker is queued (True) or refused (503).

        Unset: a single-model deployment (no registry) queues, as it always did, so a worker
        that starts later picks the jobs up; a registry deployment refuses, so a request for a
        model nobody serves is never silently stuck."""
        if self.queue_without_workers is not None:
            return self.queue_without_workers
        return self.models_file is None

    @property
    def resolved_model_id(self) -> str:
        """The name clients use in ``model``: explicit, 'tiny', or the folder / repo name."""
        if self.model_id:
            return self.model_id
        if self.model == "tiny":
            return "tiny"
        return Path(self.model.rstrip("/")).name.lower()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
