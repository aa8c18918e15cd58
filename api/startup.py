"""What the API does once at start-up for security: say loudly when authentication is off, and
register the keys of ``SFUMATO_API_KEYS_FILE``."""

from __future__ import annotations

import logging

from api.resources import ApiServices
from core.config import Settings
from core.errors import QueueUnavailable
from core.keyfile import read_key_file, seed_keys
from core.models import served_models

log = logging.getLogger("sfumato.api")

AUTH_OFF_WARNING = (
    "AUTHENTICATION IS OFF (SFUMATO_AUTH_ENABLED=false): anyone who can reach {where} can generate "
    "images and read every job. Use this only on a development machine."
)


def announce_auth_mode(settings: Settings) -> None:
    if settings.auth_enabled:
        log.info("API keys required on /v1 (see README, Security)")
        return
    log.warning("!" * 100)
    log.warning(AUTH_OFF_WARNING.format(where=f"{settings.api_host}:{settings.api_port}"))
    if settings.api_host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("... and the API listens on %s, which is NOT loopback only.", settings.api_host)
    log.warning("!" * 100)


def check_models(settings: Settings) -> None:
    """Read the model registry once at start-up: a broken SFUMATO_MODELS_FILE stops the API
    here (the error names the model and the field) instead of failing every request."""
    models = served_models(settings)
    log.info("serving %d model(s): %s", len(models), ", ".join(models))


def seed_keys_from_file(services: ApiServices) -> None:
    """Upsert the file's keys. A broken file stops start-up (InvalidRequest names it); an
    unreachable Redis does not: keys seeded earlier are still there, and the next start retries."""
    path = services.settings.api_keys_file
    if path is None:
        return
    entries = read_key_file(path)
    try:
        seeded = seed_keys(services.keys, entries)
    except QueueUnavailable as exc:
        log.error("could not register the %d key(s) of %s: %s", len(entries), path, exc.message)
        return
    log.info("registered %d API key(s) from %s", len(seeded), path)
