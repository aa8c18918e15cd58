"""Request limits: the largest request the API accepts, checked before anything is enqueued."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from core.settings.base import SettingsGroup


class RequestLimits(SettingsGroup):
    """What one request may ask for: prompt length, image size, steps, images, guidance, clip
    skip, uploads and waits. Beyond a limit the API answers 422 naming the field and the limit;
    a model may lower the size limits further (``GET /v1/models`` shows both).

    Read by the API (validation, ``GET /v1/models``); the worker never sees a request past them.
    """

    section: ClassVar[str] = "Request limits"

    max_prompt_chars: int = Field(default=2000, ge=1, description="Longest prompt / negative prompt.")
    min_size: int = Field(default=64, ge=8, description="Smallest width/height in pixels (a model may go lower).")
    max_size: int = Field(default=1024, ge=8, description="Largest width/height in pixels (models may lower it).")
    max_pixels: int = Field(default=1024 * 1024, ge=64, description="Largest width x height of one image.")
    max_steps: int = Field(default=100, ge=1, description="Most denoising steps.")
    max_n: int = Field(default=8, ge=1, description="Most images per request.")
    min_guidance: float = Field(default=0.0, description="Smallest `guidance_scale`.")
    max_guidance: float = Field(default=30.0, description="Largest `guidance_scale`.")
    max_clip_skip: int = Field(default=4, ge=0, description="Largest `clip_skip`.")
    max_prompt_chunks: int = Field(
        default=8,
        ge=1,
        description=(
            "Most 75-token chunks a prompt / negative prompt may encode to (A1111-style long prompts; "
            "`BREAK` starts a chunk). The API refuses prompts certainly over it; the worker fails a job "
            "whose exact count (model tokenizer) is over it."
        ),
    )
    max_upload_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest decoded upload (init image, mask, control image)."
    )
    max_upload_pixels: int = Field(
        default=4096 * 4096, ge=64, description="Largest declared upload dimensions (checked before decoding)."
    )
    max_wait_s: float = Field(default=60.0, ge=0, description="Longest `?wait=` a client may ask for.")
    max_timeout_s: int = Field(
        default=24 * 3600, ge=1, description="Largest `timeout_s` (start deadline) a request may carry."
    )
