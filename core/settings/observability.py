"""Observability settings: logs and Prometheus metrics."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from core.settings.base import SettingsGroup


class ObservabilitySettings(SettingsGroup):
    """What the processes tell an operator: log level and format, whether Prometheus metrics
    are recorded, and where a worker serves its ``/metrics``, ``/healthz`` and ``/livez``.

    Read by the API and the worker (the ``worker_metrics_*`` settings by the worker only).
    """

    section: ClassVar[str] = "Logs and metrics"

    log_level: str = Field(default="INFO", description="Log level (`DEBUG`, `INFO`, `WARNING`, `ERROR`).")
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="`json`: one JSON object per log line (with `request_id`, `job_id`); `text` for people "
        "(`make run` sets it).",
    )
    metrics_enabled: bool = Field(
        default=True, description="Record Prometheus metrics and serve them on /metrics (API and workers)."
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="Bind address of a worker's `/metrics`, `/healthz` and `/livez` (`0.0.0.0` in a pod).",
    )
    worker_metrics_port: int = Field(
        default=9450,
        ge=0,
        le=65535,
        description="Port of a worker's `/metrics`, `/healthz` and `/livez`; 0 = no HTTP server. A taken port "
        "stops the worker at start.",
    )
