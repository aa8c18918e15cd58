"""The one Settings object for the API, the worker and the dev stack.

Every knob is an environment variable with the prefix ``SFUMATO_`` (``SFUMATO_REDIS_URL``,
``SFUMATO_MAX_STEPS`` ...). The fields are declared by concern in ``core/settings/`` (storage,
models, batching, request limits, security, delivery, observability, API server, jobs and
worker runtime); :class:`Settings` inherits them all, so every field stays a flat attribute
(``settings.max_steps``) and a keyword of ``Settings(...)``. Settings are built once by
:func:`get_settings` and never at import time, so tests can set the environment and call
``get_settings.cache_clear()``. The reference of every variable is
docs/reference/configuration.md, generated from the field descriptions.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from core.settings import (
    ApiServerSettings,
    BatchingSettings,
    DeliverySettings,
    ModelSettings,
    ObservabilitySettings,
    RequestLimits,
    RuntimeSettings,
    SecuritySettings,
    StorageSettings,
)


class Settings(
    StorageSettings,
    ModelSettings,
    BatchingSettings,
    RequestLimits,
    SecuritySettings,
    DeliverySettings,
    ObservabilitySettings,
    ApiServerSettings,
    RuntimeSettings,
):
    """Runtime configuration: every group's fields and properties in one flat object.

    The properties here combine settings of more than one group.
    """

    @property
    def resolved_max_body_bytes(self) -> int:
        """The body limit in force: explicit, or room for an image, a mask and
        ``max_controlnets`` control images at the upload limit."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return (2 + self.max_controlnets) * (self.max_upload_bytes * 4 // 3 + 4) + 64 * 1024

    @property
    def resolved_lora_dir(self) -> Path:
        """Where LoRAs are listed (API) and loaded (worker): explicit, or data_dir/loras."""
        return self.lora_dir or self.data_dir / "loras"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
