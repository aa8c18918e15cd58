"""API keys: format, hashing, and the Redis store every API replica reads on every request.

A key looks like ``sf_<id>_<secret>``: ``id`` is 16 hex characters (public: it names the key
in logs, the admin API and rate-limit counters), ``secret`` is 43 base62 characters (~256
bits). Only the SHA-256 of the secret is stored; a presented secret is hashed and compared
with :func:`hmac.compare_digest`. A slow password hash buys nothing here: the secret is
random, not chosen by a person, so it cannot be guessed from its hash.

Keys live in Redis (``{prefix}:apikey:{id}``), not in the API process: revoking a key takes
effect on the next request on every replica, and nothing is cached in the web process.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from core.config import Settings
from core.errors import InvalidRequest, KeyNotFound, Unauthorized
from core.jobs import redis_errors
from core.priority import DEFAULT_PRIORITY, PRIORITIES, PriorityClass, rank

IMAGES_READ = "images:read"
IMAGES_WRITE = "images:write"
ADMIN = "admin"
#: Every scope there is. They are independent: ``admin`` manages keys, it does not imply images.
SCOPES = (IMAGES_READ, IMAGES_WRITE, ADMIN)
DEFAULT_SCOPES = (IMAGES_READ, IMAGES_WRITE)

KEY_PREFIX = "sf_"
_ID_LEN = 16
_SECRET_LEN = 43
_BASE62 = string.ascii_letters + string.digits
_TOKEN = re.compile(rf"^sf_([0-9a-f]{{{_ID_LEN}}})_([A-Za-z0-9]{{{_SECRET_LEN}}})$")
_KEY_ID = re.compile(rf"^[0-9a-f]{{{_ID_LEN}}}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: A tenant is one storage-key segment (``{tenant}/{job_id}/...``) and a Redis key part.
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_NAME_CHARS = 100

#: Per-key overrides of the Settings limits (None: the deployment default).
LIMIT_FIELDS = ("rate_limit_rps", "rate_limit_burst", "images_per_minute", "max_concurrent_jobs")


@dataclass(frozen=True)
class KeyLimits:
    """Limits stored with a key; a None field falls back to Settings."""

    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    images_per_minute: int | None = None
    max_concurrent_jobs: int | None = None

    def resolve(self, settings: Settings) -> KeyLimits:
        """Every field filled: the override where set, else the Settings value."""
        return KeyLimits(**{name: _pick(getattr(self, name), getattr(settings, name)) for name in LIMIT_FIELDS})

    def overrides(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in LIMIT_FIELDS if getattr(self, name) is not None}


def _pick(override: Any, default: Any) -> Any:
    return default if override is None else override


@dataclass(frozen=True)
class ApiKey:
    """One key as stored (never the secret itself)."""

    id: str
    tenant: str
    name: str
    scopes: frozenset[str]
    created_at: float
    revoked: bool = False
    revoked_at: float | None = None
    limits: KeyLimits = field(default_factory=KeyLimits)
    #: The class of the key's jobs: their default, and the highest a request may ask for.
    priority: PriorityClass = DEFAULT_PRIORITY

    def public(self) -> dict[str, Any]:
        """What the admin API and CLI show: no hash, no secret."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "created_at": self.created_at,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
            "limits": self.limits.overrides(),
            "priority": self.priority,
        }


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request: whose jobs, which scopes, which limits."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    limits: KeyLimits  # resolved: every field set
    #: A request without ``priority`` gets this class ...
    priority: PriorityClass = DEFAULT_PRIORITY
    #: ... and may ask for any class up to this one.
    max_priority: PriorityClass = DEFAULT_PRIORITY

    @classmethod
    def of(cls, key: ApiKey, settings: Settings) -> Principal:
        return cls(
            key_id=key.id,
            tenant=key.tenant,
            scopes=key.scopes,
            limits=key.limits.resolve(settings),
            priority=key.priority,
            max_priority=key.priority,
        )

    def job_priority(self, asked: PriorityClass | None) -> PriorityClass:
        """The class of a job this caller submits: ``asked`` (else the key's), never above the
        key's; a higher ask is refused (422, nothing queued) rather than quietly lowered, so a
        client learns its key's class instead of getting slower service without a word."""
        if asked is None:
            return self.priority
        if rank(asked) < rank(self.max_priority):
            allowed = ", ".join(PRIORITIES[rank(self.max_priority) :])
            raise InvalidRequest(
                f"priority {asked!r} is above this API key's priority {self.max_priority!r}; "
                f"this key may ask for: {allowed}",
                param="priority",
            )
        return asked


#: The caller when SFUMATO_AUTH_ENABLED=false (dev mode): one tenant with every scope.
ANONYMOUS_KEY_ID = "anonymous"
ANONYMOUS_TENANT = "default"


def anonymous_principal(settings: Settings) -> Principal:
    return Principal(
        key_id=ANONYMOUS_KEY_ID,
        tenant=ANONYMOUS_TENANT,
        scopes=frozenset(SCOPES),
        limits=KeyLimits().resolve(settings),
        priority=DEFAULT_PRIORITY,
        max_priority=PRIORITIES[0],  # no keys, no ceilings: any class may be asked for
    )


# --- the token ---------------------------------------------------------------------------


def generate_token() -> tuple[str, str]:
    """A new ``(key_id, token)``; the token is shown to its owner once and never stored."""
    key_id = secrets.token_hex(_ID_LEN // 2)
    secret = "".join(secrets.choice(_BASE62) for _ in range(_SECRET_LEN))
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed token, else None (checked before any Redis call)."""
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_token(token: str) -> tuple[str, str]:
    """``(key_id, sha256 of the secret)``: what a hashed keys-file entry holds."""
    parsed = parse_token(token)
    if parsed is None:
        raise InvalidRequest("not an API key: expected sf_<16 hex>_<43 letters/digits>", param="key")
    return parsed[0], hash_secret(parsed[1])


# --- validation of what an admin sends ---------------------------------------------------


def check_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant) or ".." in tenant:
        raise InvalidRequest(
            f"tenant {tenant!r} is invalid: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit",
            param="tenant",
        )
    return tenant


def check_scopes(scopes: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidRequest(
            f"scopes must be a non-empty subset of {', '.join(SCOPES)}; got {sorted(scopes)}", param="scopes"
        )
    return frozenset(scopes)


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidRequest(f"name must be 1-{MAX_NAME_CHARS} printable characters", param="name")
    return name


def check_priority(priority: str) -> PriorityClass:
    for known in PRIORITIES:
        if priority == known:
            return known
    raise InvalidRequest(f"priority must be one of {', '.join(PRIORITIES)}; got {priority!r}", param="priority")


def check_key_id(key_id: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidRequest(f"key id must be {_ID_LEN} lowercase hex characters", param="key_id")
    return key_id


def check_sha256(value: str) -> str:
    if not _SHA256_HEX.fullmatch(value):
        raise InvalidRequest("secret_sha256 must be 64 lowercase hex characters", param="secret_sha256")
    return value


# --- the store ---------------------------------------------------------------------------


def _to_key(key_id: str, data: dict[bytes, bytes]) -> tuple[ApiKey, str]:
    text = {k.decode(): v.decode() for k, v in data.items()}
    limits = KeyLimits(
        rate_limit_rps=float(text["rate_limit_rps"]) if text.get("rate_limit_rps") else None,
        rate_limit_burst=int(text["rate_limit_burst"]) if text.get("rate_limit_burst") else None,
        images_per_minute=int(text["images_per_minute"]) if text.get("images_per_minute") else None,
        max_concurrent_jobs=int(text["max_concurrent_jobs"]) if text.get("max_concurrent_jobs") else None,
    )
    key = ApiKey(
        id=key_id,
        tenant=text["tenant"],
        name=text.get("name", ""),
        scopes=frozenset(text.get("scopes", "").split()),
        created_at=float(text.get("created_at", "0")),
        revoked=text.get("revoked") == "1",
        revoked_at=float(text["revoked_at"]) if text.get("revoked_at") else None,
        limits=limits,
        # Keys stored before priorities existed have no field: standard, as their jobs always were.
        priority=check_priority(text["priority"]) if text.get("priority") else DEFAULT_PRIORITY,
    )
    return key, text.get("secret_sha256", "")


class KeyStore:
    """Create, look up, list and revoke keys in Redis. Every call reads Redis: no cache."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self._prefix = f"{settings.queue_prefix}:apikey"

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}:{key_id}"

    @property
    def _index(self) -> str:
        return f"{self._prefix}s"

    def create(
        self,
        tenant: str,
        name: str,
        scopes: list[str] | tuple[str, ...] = DEFAULT_SCOPES,
        limits: KeyLimits | None = None,
        priority: str = DEFAULT_PRIORITY,
    ) -> tuple[ApiKey, str]:
        """A new key: returns the record and the token (the only time the token exists)."""
        key_id, token = generate_token()
        parsed = parse_token(token)
        assert parsed is not None
        key = ApiKey(
            id=key_id,
            tenant=check_tenant(tenant),
            name=check_name(name),
            scopes=check_scopes(scopes),
            created_at=time.time(),
            limits=limits or KeyLimits(),
            priority=check_priority(priority),
        )
        self.put(key, hash_secret(parsed[1]))
        return key, token

    def put(self, key: ApiKey, secret_sha256: str) -> None:
        """Write ``key`` with the hash of its secret (creation and seeding)."""
        mapping: dict[Any, str] = {
            "tenant": key.tenant,
            "name": key.name,
            "scopes": " ".join(sorted(key.scopes)),
            "secret_sha256": check_sha256(secret_sha256),
            "created_at": repr(key.created_at),
            "revoked": "1" if key.revoked else "0",
            "revoked_at": "" if key.revoked_at is None else repr(key.revoked_at),
            "priority": key.priority,
        }
        for name in LIMIT_FIELDS:
            value = getattr(key.limits, name)
            mapping[name] = "" if value is None else str(value)
        with redis_errors(), self.connection.pipeline() as pipe:
            pipe.hset(self._key(key.id), mapping=mapping)
            pipe.sadd(self._index, key.id)
            pipe.execute()

    def get(self, key_id: str) -> ApiKey:
        """The key with this id; :class:`KeyNotFound` (404) when there is none."""
        found = self.lookup(key_id) if _KEY_ID.fullmatch(key_id) else None
        if found is None:
            raise KeyNotFound(f"no API key with id {key_id[:64]!r}", param="key_id")
        return found[0]

    def lookup(self, key_id: str) -> tuple[ApiKey, str] | None:
        """``(key, SHA-256 of its secret)``, or None when there is no such key."""
        with redis_errors():
            data = self.connection.hgetall(self._key(key_id))
        return _to_key(key_id, data) if data else None  # type: ignore[arg-type]

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of ``tenant``), oldest first."""
        with redis_errors():
            ids = sorted(i.decode() for i in self.connection.smembers(self._index))  # type: ignore[union-attr]
        keys = [found[0] for found in map(self.lookup, ids) if found is not None]
        keys = [k for k in keys if tenant is None or k.tenant == tenant]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    def revoke(self, key_id: str) -> ApiKey:
        """Mark the key revoked (kept for audit). Idempotent; the next request with it is a 401."""
        key = self.get(key_id)
        if key.revoked:
            return key
        now = time.time()
        with redis_errors():
            self.connection.hset(self._key(key_id), mapping={"revoked": "1", "revoked_at": repr(now)})
        return replace(key, revoked=True, revoked_at=now)

    def authenticate(self, token: str) -> ApiKey:
        """The live key behind ``token``; :class:`Unauthorized` for a malformed, unknown or revoked one."""
        parsed = parse_token(token)
        if parsed is None:
            raise Unauthorized("the API key is malformed", token_presented=True)
        key_id, secret = parsed
        found = self.lookup(key_id)
        expected = found[1] if found is not None else "0" * 64
        # Hash and compare even for an unknown id, so both paths cost the same.
        matches = hmac.compare_digest(hash_secret(secret), expected)
        if found is None or not matches:
            raise Unauthorized("the API key is not valid", token_presented=True)
        key = found[0]
        if key.revoked:
            raise Unauthorized("the API key has been revoked", token_presented=True)
        return key
