"""Seed API keys from a file (``SFUMATO_API_KEYS_FILE``) for simple deployments.

The file is JSON, either a list of entries or ``{"keys": [...]}``. Each entry names a tenant and
either the whole key (``"key": "sf_..."``) or, better, only its id and the SHA-256 of its secret
(``"id"`` + ``"secret_sha256"``, from ``sfumato-admin keys hash``), so the file holds nothing
that can call the API::

    {"keys": [
      {"id": "3f2a...", "secret_sha256": "9b1c...", "tenant": "acme", "name": "ci",
       "scopes": ["images:read", "images:write"], "limits": {"images_per_minute": 30},
       "priority": "interactive"}
    ]}

Seeding is an upsert run by every API replica at start-up: tenant, name, scopes, hash and limits
follow the file; ``created_at`` is kept; a key revoked through the CLI or admin API stays
revoked (delete it from the file too).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.apikeys import (
    DEFAULT_SCOPES,
    ApiKey,
    KeyLimits,
    KeyStore,
    check_key_id,
    check_name,
    check_scopes,
    check_sha256,
    check_tenant,
    hash_token,
)
from core.errors import InvalidRequest
from core.priority import DEFAULT_PRIORITY, PriorityClass


class LimitsEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_limit_rps: float | None = Field(default=None, ge=0)
    rate_limit_burst: int | None = Field(default=None, ge=1)
    images_per_minute: int | None = Field(default=None, ge=0)
    max_concurrent_jobs: int | None = Field(default=None, ge=0)


class KeyEntry(BaseModel):
    """One key in the file: a plaintext ``key``, or ``id`` + ``secret_sha256``."""

    model_config = ConfigDict(extra="forbid")

    tenant: str
    name: str = "seeded"
    scopes: list[str] = Field(default_factory=lambda: list(DEFAULT_SCOPES))
    key: str | None = None
    id: str | None = None
    secret_sha256: str | None = None
    limits: LimitsEntry = LimitsEntry()
    #: The key's priority class (core/priority.py): its jobs' default and ceiling.
    priority: PriorityClass = DEFAULT_PRIORITY

    @model_validator(mode="after")
    def _one_form(self) -> KeyEntry:
        plaintext = self.key is not None and self.id is None and self.secret_sha256 is None
        hashed = self.key is None and self.id is not None and self.secret_sha256 is not None
        if not (plaintext or hashed):
            raise ValueError("give either 'key', or both 'id' and 'secret_sha256'")
        return self

    def check(self) -> None:
        """Every rule the store applies, so a bad file stops start-up, not a request later."""
        self.id_and_hash()
        check_tenant(self.tenant)
        check_name(self.name)
        check_scopes(self.scopes)

    def id_and_hash(self) -> tuple[str, str]:
        if self.key is not None:
            return hash_token(self.key)
        assert self.id is not None and self.secret_sha256 is not None
        return check_key_id(self.id), check_sha256(self.secret_sha256)


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry]


def read_key_file(path: Path) -> list[KeyEntry]:
    """The entries of ``path``; :class:`InvalidRequest` naming the file and the problem."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, list):
            data = {"keys": data}
        entries = KeyFile.model_validate(data).keys
    except (OSError, ValueError, ValidationError) as exc:
        # ValidationError messages show the input: never echo secrets from the file.
        if isinstance(exc, ValidationError):
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        else:
            detail = type(exc).__name__
        raise InvalidRequest(f"API keys file {path} is invalid: {detail}", param="api_keys_file") from None
    for index, entry in enumerate(entries):
        try:
            entry.check()
        except InvalidRequest as exc:
            raise InvalidRequest(f"API keys file {path}, keys.{index}: {exc.message}", param="api_keys_file") from None
    return entries


def seed_keys(store: KeyStore, entries: list[KeyEntry]) -> list[ApiKey]:
    """Upsert ``entries`` into ``store``; returns the keys as stored."""
    seeded = []
    for entry in entries:
        key_id, secret_sha256 = entry.id_and_hash()
        found = store.lookup(key_id)
        key = ApiKey(
            id=key_id,
            tenant=check_tenant(entry.tenant),
            name=check_name(entry.name),
            scopes=check_scopes(entry.scopes),
            created_at=time.time(),
            limits=KeyLimits(**entry.limits.model_dump()),
            priority=entry.priority,
        )
        if found is not None:
            old = found[0]
            key = replace(key, created_at=old.created_at, revoked=old.revoked, revoked_at=old.revoked_at)
        store.put(key, secret_sha256)
        seeded.append(key)
    return seeded
