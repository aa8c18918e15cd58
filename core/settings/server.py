"""API server settings: where the API listens, how many processes it runs, how it names
itself to clients."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from core.settings.base import SettingsGroup


class ApiServerSettings(SettingsGroup):
    """The API process itself: bind address and port, the number of uvicorn worker processes,
    and the public base URL put into the links it hands out.

    Read by the API only (``python -m api`` and the app factory).
    """

    section: ClassVar[str] = "API server"

    api_host: str = Field(default="127.0.0.1", description="API bind address (`0.0.0.0` in a container).")
    api_port: int = Field(default=8000, ge=1, le=65535, description="API port.")
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="uvicorn worker processes of the API; above 1 their metrics are merged (Prometheus "
        "multiprocess mode).",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL clients use to reach the API, used in the local-disk image URLs it hands out "
        "(unset: the URL of the incoming request).",
    )
