"""Security settings: API keys, per-key quotas, the body limit, browser headers and pickle."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from core.settings.base import SettingsGroup, shown_default


class SecuritySettings(SettingsGroup):
    """Who may call the API and how much: API keys, per-key rate limits and quotas, the queue
    cap per model, the request body limit, CORS and HSTS, the interactive docs, and whether a
    worker may unpickle weights.

    Read by the API, except ``SFUMATO_ALLOW_PICKLE_WEIGHTS`` (the worker, when it loads weights).
    """

    section: ClassVar[str] = "Security and quotas"

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
        default=1000, ge=0, description="Queued jobs per model before new ones get 429 `queue_full`; 0 = no cap."
    )
    max_body_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Largest request body; above it a 413 `payload_too_large`, answered from `Content-Length` "
        "before the body is read (a chunked body: as soon as it passes the limit). Unset: what the largest valid "
        "request carries, `(2 + SFUMATO_MAX_CONTROLNETS) x (SFUMATO_MAX_UPLOAD_BYTES x 4 / 3 + 4) + 65536` "
        "(an init image, a mask and the control images, base64-encoded, plus 64 KiB of JSON): "
        "44,804,792 bytes (42.7 MiB) with the defaults. Lower `SFUMATO_MAX_UPLOAD_BYTES` or "
        "`SFUMATO_MAX_CONTROLNETS` to lower it (4 MiB uploads, no ControlNet: 11,250,354 bytes).",
        json_schema_extra=shown_default("computed"),
    )
    max_body_bytes_in_flight: int | None = Field(
        default=None,
        ge=0,
        description="Request body bytes one API process reads and holds at once (bodies over 256 KiB reserve "
        "their `Content-Length`, a chunked one the whole limit); a body that finds no room waits up to 30 s "
        "before it is read, then gets 503 `server_busy` with `Retry-After`. Bounds the API's memory under many "
        "large bodies (parsing makes copies: see docs/operations/security.md). Unset: 4 x the body limit "
        "(179,219,168 bytes with the defaults); 0 = no budget.",
        json_schema_extra=shown_default("computed"),
    )
    cors_allow_origins: str = Field(
        default="", description="Comma-separated origins allowed by CORS (`*` for any); empty = CORS off."
    )
    hsts_max_age_s: int = Field(
        default=0,
        ge=0,
        description="Strict-Transport-Security max-age; 0 = no header (set it when clients reach the API over TLS).",
    )
    docs_enabled: bool = Field(
        default=True, description="Serve `/docs`, `/redoc` and `/openapi.json` (no secrets in them)."
    )
    allow_pickle_weights: bool = Field(
        default=False,
        description="Let the worker load pickle (`.bin`/`.ckpt`) weights. Unsafe: unpickling runs code.",
    )

    @property
    def cors_origins(self) -> list[str]:
        """SFUMATO_CORS_ALLOW_ORIGINS as a list (empty: CORS is off)."""
        return [o.strip() for o in self.cors_allow_origins.split(",") if o.strip()]
