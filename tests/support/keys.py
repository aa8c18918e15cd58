"""API keys for tests: created in the test's Redis exactly as ``sfumato-admin keys create`` does."""

from __future__ import annotations

from core.apikeys import DEFAULT_SCOPES, KeyLimits, KeyStore
from core.config import Settings
from core.jobs import connect


def create_key(
    settings: Settings,
    tenant: str = "default",
    scopes: tuple[str, ...] | list[str] = DEFAULT_SCOPES,
    name: str = "test",
    limits: KeyLimits | None = None,
    priority: str = "standard",
) -> str:
    """A new key in ``settings``' Redis (and queue prefix); returns the token."""
    connection = connect(settings)
    try:
        _, token = KeyStore(connection, settings).create(tenant, name, list(scopes), limits, priority)
    finally:
        connection.close()
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def env_key(env: dict[str, str], **kwargs: object) -> str:
    """A key for a stack configured by ``SFUMATO_*`` variables (Redis URL and queue prefix)."""
    settings = Settings(redis_url=env["SFUMATO_REDIS_URL"], queue_prefix=env.get("SFUMATO_QUEUE_PREFIX", "sfumato"))
    return create_key(settings, **kwargs)  # type: ignore[arg-type]
