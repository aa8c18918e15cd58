"""core.apikeys without Redis: the token format, hashing, and what an admin may send."""

from __future__ import annotations

import hashlib

import pytest

from core.apikeys import (
    KeyLimits,
    check_name,
    check_scopes,
    check_tenant,
    generate_token,
    hash_token,
    parse_token,
)
from core.config import Settings
from core.errors import InvalidRequest


def test_tokens_are_high_entropy_with_a_public_id() -> None:
    tokens = {generate_token() for _ in range(200)}
    assert len(tokens) == 200
    key_id, token = next(iter(tokens))
    assert token.startswith(f"sf_{key_id}_") and len(key_id) == 16
    secret = token.rsplit("_", 1)[1]
    assert len(secret) == 43  # 43 base62 characters: log2(62) * 43 ~ 256 bits
    assert parse_token(token) == (key_id, secret)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "sf_",
        "sf_0123456789abcdef",
        "sf_0123456789ABCDEF_" + "a" * 43,  # id is lowercase hex
        "sf_0123456789abcdef_" + "a" * 42,
        "sf_0123456789abcdef_" + "a" * 44,
        "sf_0123456789abcdef_" + "a" * 42 + "-",
        "sk_0123456789abcdef_" + "a" * 43,
        "sf_0123456789abcdef_" + "a" * 43 + "\n",
        " sf_0123456789abcdef_" + "a" * 43,
    ],
)
def test_malformed_tokens_are_refused_before_any_lookup(token: str) -> None:
    assert parse_token(token) is None


def test_hash_is_sha256_of_the_secret_only() -> None:
    key_id, token = generate_token()
    secret = token.rsplit("_", 1)[1]
    assert hash_token(token) == (key_id, hashlib.sha256(secret.encode()).hexdigest())
    with pytest.raises(InvalidRequest, match="not an API key"):
        hash_token("hunter2")


@pytest.mark.parametrize("tenant", ["acme", "Acme-2", "a.b_c", "0" * 64])
def test_valid_tenants(tenant: str) -> None:
    assert check_tenant(tenant) == tenant


@pytest.mark.parametrize("tenant", ["", "a/b", "..", "a..b", ".hidden", "-x", "x" * 65, "a b", "é", "a\n"])
def test_tenants_that_could_blur_storage_keys_are_refused(tenant: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_tenant(tenant)
    assert info.value.param == "tenant"


def test_scopes_and_names() -> None:
    assert check_scopes(["admin", "images:read"]) == frozenset({"admin", "images:read"})
    for bad in ([], ["images:*"], ["root"]):
        with pytest.raises(InvalidRequest, match="scopes"):
            check_scopes(bad)
    for bad_name in ("", "x" * 101, "tab\there"):
        with pytest.raises(InvalidRequest, match="name"):
            check_name(bad_name)


def test_key_limits_fall_back_to_settings() -> None:
    settings = Settings(rate_limit_rps=5, rate_limit_burst=7, images_per_minute=60, max_concurrent_jobs=3)
    resolved = KeyLimits(images_per_minute=10, max_concurrent_jobs=0).resolve(settings)
    assert resolved == KeyLimits(rate_limit_rps=5, rate_limit_burst=7, images_per_minute=10, max_concurrent_jobs=0)
    assert KeyLimits(images_per_minute=10).overrides() == {"images_per_minute": 10}
