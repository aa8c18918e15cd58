"""Delivery settings: how results reach a client (progress, live events, webhooks, the
OpenAI-compatible wait)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from core.settings.base import SettingsGroup


class DeliverySettings(SettingsGroup):
    """How a client learns about its job: progress updates and previews, the Server-Sent
    Events stream, webhook deliveries and retries, and how long the OpenAI-compatible
    endpoint waits for its images.

    Read by the worker (how often it publishes progress and previews) and the API (event
    streams, webhook delivery, the OpenAI endpoint).
    """

    section: ClassVar[str] = "Progress, events and webhooks"

    progress_interval_s: float = Field(
        default=0.25,
        ge=0,
        le=60,
        description="Least time between two progress updates a worker publishes per batch (the last step is "
        "always published).",
    )
    preview_interval_s: float = Field(
        default=1.0,
        ge=0,
        le=600,
        description="Least time between two previews of a job that asked for them (`preview: true`).",
    )
    events_poll_s: float = Field(
        default=0.5,
        gt=0,
        le=10,
        description="How often an event stream re-reads its job's state and queue position (and notices a gone "
        "client).",
    )
    events_max_s: float = Field(
        default=3600.0, gt=0, description="Longest an event stream (SSE) stays open; clients reconnect."
    )
    webhook_allow_loopback: bool = Field(
        default=False, description="Let webhooks reach 127.0.0.1/::1. For tests only; private addresses stay refused."
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=50, description="Deliveries tried per webhook.")
    webhook_retry_base_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="First retry delay of a failed delivery; doubles each time (capped at an hour).",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120, description="Time limit of one delivery attempt.")
    webhook_poll_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often each API process looks for ended webhook jobs and due deliveries.",
    )
    openai_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest `POST /v1/images/generations` waits for its images (then 504, job canceled).",
    )
