"""``Idempotency-Key``: a retried submit returns the job the first attempt created.

The key (scoped to the tenant, hashed so any client string is safe in Redis) maps to the job id
and a fingerprint of the request body. The first request claims the key with SET NX, so two
concurrent retries cannot both enqueue; the same key with a different body is a conflict.
Keys expire after ``SFUMATO_IDEMPOTENCY_TTL_S``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis

from core.config import Settings
from core.errors import InvalidRequest, JobConflict
from core.jobs import redis_errors

MAX_KEY_CHARS = 255


@dataclass(frozen=True)
class Claim:
    """``job_id`` to use; ``replay`` when an earlier request with this key created it."""

    job_id: str
    replay: bool


#: The canonical JSON the fingerprint hashes (sorted keys, no spaces).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def fingerprint(body: dict[str, Any]) -> str:
    """SHA-256 of ``body``'s canonical JSON, hashed piece by piece as it is encoded: the same
    digest as hashing ``json.dumps(...)``, without holding a second copy of a body whose
    uploads make it tens of megabytes (at most one field's text is held at a time)."""
    digest = hashlib.sha256()
    for piece in _CANONICAL.iterencode(body):
        digest.update(piece.encode())
    return digest.hexdigest()


class IdempotencyKeys:
    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def _key(self, tenant: str, key: str) -> str:
        if not key or len(key) > MAX_KEY_CHARS:
            raise InvalidRequest(f"Idempotency-Key must be 1..{MAX_KEY_CHARS} characters", param="Idempotency-Key")
        digest = hashlib.sha256(f"{tenant}\n{key}".encode()).hexdigest()
        return f"{self.settings.queue_prefix}:idem:{digest}"

    def claim(self, tenant: str, key: str, body_fingerprint: str, new_job_id: str) -> Claim:
        """Claim ``key`` for ``new_job_id``, or return the job an earlier request created."""
        redis_key = self._key(tenant, key)
        record = json.dumps({"job_id": new_job_id, "body": body_fingerprint})
        with redis_errors():
            if self.connection.set(redis_key, record, nx=True, ex=self.settings.idempotency_ttl_s):
                return Claim(new_job_id, replay=False)
            stored = self.connection.get(redis_key)
        if stored is None:  # expired between SET and GET: treat as new
            return self.claim(tenant, key, body_fingerprint, new_job_id)
        earlier = json.loads(stored)
        if earlier["body"] != body_fingerprint:
            raise JobConflict(
                "this Idempotency-Key was used with a different request body; use a new key",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        return Claim(str(earlier["job_id"]), replay=True)

    def release(self, tenant: str, key: str) -> None:
        """Forget a claim whose job was never enqueued (the enqueue failed), so a retry can run."""
        with redis_errors():
            self.connection.delete(self._key(tenant, key))
