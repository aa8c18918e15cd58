"""Environment handling for tests: strip the developer's SFUMATO_* and hand Settings to
subprocesses.

The API and worker read their configuration only from ``SFUMATO_*`` variables, so a test that
starts them as processes passes a Settings object through :func:`settings_env`, and a test run
must not inherit the developer's own ``SFUMATO_*`` values.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from core.config import Settings

PREFIX = "SFUMATO_"


def without_sfumato(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` minus every ``SFUMATO_*`` variable."""
    return {k: v for k, v in env.items() if not k.upper().startswith(PREFIX)}


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for a subprocess that rebuilds ``settings`` exactly.

    ``base`` (default: this process's environment) keeps everything but its ``SFUMATO_*``
    variables; every field of ``settings`` that is not None is written as ``SFUMATO_<NAME>``,
    secrets included (the subprocess needs them).
    """
    env = without_sfumato(os.environ if base is None else base)
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple | list):  # the environment's form: comma-separated
            value = ",".join(str(item) for item in value)
        env[PREFIX + name.upper()] = str(value)
    return env


#: Per-key limits off: for tests and benchmarks about something other than rate limiting.
NO_LIMITS: dict[str, str] = {
    "SFUMATO_RATE_LIMIT_RPS": "0",
    "SFUMATO_IMAGES_PER_MINUTE": "0",
    "SFUMATO_MAX_CONCURRENT_JOBS": "0",
}

#: Liveness shortened (1 s heartbeats, 4 s lease, 1 s reaper) so recovery tests are quick; the
#: production defaults change only how long recovery takes, not what happens.
FAST_LIVENESS: dict[str, str] = {
    "SFUMATO_HEARTBEAT_INTERVAL_S": "1",
    "SFUMATO_EXECUTION_TTL_S": "4",
    "SFUMATO_REAPER_INTERVAL_S": "1",
    "SFUMATO_WORKER_TTL_S": "16",
}


def service_env(redis_url: str, workdir: Path, prefix: str, **extra: str) -> dict[str, str]:
    """``SFUMATO_*`` for an API or worker process started by a test or benchmark: its own data
    dir and queue prefix (so runs sharing a Redis never meet), a fixed URL signing key, offline
    hub. ``extra`` variables are added or override."""
    return {
        "SFUMATO_REDIS_URL": redis_url,
        "SFUMATO_DATA_DIR": str(workdir / "data"),
        "SFUMATO_QUEUE_PREFIX": f"{prefix}-{secrets.token_hex(4)}",
        "SFUMATO_URL_SIGNING_KEY": f"{prefix}-signing-key",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def s3_env(server: Any, bucket: str, create: bool = True) -> dict[str, str]:
    """``SFUMATO_S3_*`` for a private SeaweedFS (``tests.support.seaweed.SeaweedServer``)."""
    return {
        "SFUMATO_S3_BUCKET": bucket,
        "SFUMATO_S3_ENDPOINT_URL": server.endpoint_url,
        "SFUMATO_S3_ACCESS_KEY_ID": server.access_key,
        "SFUMATO_S3_SECRET_ACCESS_KEY": server.secret_key,
        "SFUMATO_S3_CREATE_BUCKET": "true" if create else "false",
    }
