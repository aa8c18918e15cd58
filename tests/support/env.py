"""Environment handling for tests: strip the developer's SFUMATO_* and hand Settings to
subprocesses.

The API and worker read their configuration only from ``SFUMATO_*`` variables, so a test that
starts them as processes passes a Settings object through :func:`settings_env`, and a test run
must not inherit the developer's own ``SFUMATO_*`` values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

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
        env[PREFIX + name.upper()] = str(value)
    return env
