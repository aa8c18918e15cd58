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

#: Room in the default body limit for the JSON around the uploads: two prompts at their limit,
#: fully \u-escaped (6 bytes a character), LoRAs, ControlNet units and the other fields.
JSON_ALLOWANCE_BYTES = 64 * 1024
#: Maximum-size bodies an API process reads and holds at once by default.
BODIES_IN_FLIGHT = 4


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
        """The body limit in force: explicit, or exactly what the largest valid request carries:
        an init image, a mask and ``max_controlnets`` control images, each at the upload limit
        and base64-encoded (the bound ``core.uploads.inspect_upload`` applies), plus
        :data:`JSON_ALLOWANCE_BYTES` for everything else. A body past it could only be refused
        later, after costing its parse."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        uploads = 2 + self.max_controlnets
        return uploads * (self.max_upload_bytes * 4 // 3 + 4) + JSON_ALLOWANCE_BYTES

    @property
    def resolved_max_body_bytes_in_flight(self) -> int:
        """Body bytes one API process may hold at once: explicit (0 = unbounded) or
        :data:`BODIES_IN_FLIGHT` maximum-size bodies."""
        if self.max_body_bytes_in_flight is not None:
            return self.max_body_bytes_in_flight
        return BODIES_IN_FLIGHT * self.resolved_max_body_bytes

    @property
    def resolved_lora_dir(self) -> Path:
        """Where LoRAs are listed (API) and loaded (worker): explicit, or data_dir/loras."""
        return self.lora_dir or self.data_dir / "loras"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
