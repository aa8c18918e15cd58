"""API keys in a real Redis: the store, seeding from a file, and the admin CLI as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from core.apikeys import KeyLimits, KeyStore, hash_token
from core.config import Settings
from core.errors import InvalidRequest, KeyNotFound, Unauthorized
from core.jobs import connect
from core.keyfile import read_key_file, seed_keys
from devstack.net import free_port
from tests.conftest import SettingsFactory
from tests.support.env import settings_env
from tests.support.processes import REPO_ROOT


@pytest.fixture
def settings(make_settings: SettingsFactory, clean_redis: redis.Redis) -> Settings:
    return make_settings(queue_prefix="keys-test")


@pytest.fixture
def store(settings: Settings) -> KeyStore:
    return KeyStore(connect(settings), settings)


def test_only_the_hash_is_stored_and_the_key_authenticates(store: KeyStore, clean_redis: redis.Redis) -> None:
    key, token = store.create("acme", "ci", ["images:read"], KeyLimits(images_per_minute=5))
    secret = token.rsplit("_", 1)[1]
    dump = b"".join(k + b"".join(v for v in clean_redis.hgetall(k).values()) for k in clean_redis.keys("*apikey:*"))
    assert secret.encode() not in dump and token.encode() not in dump
    found = store.authenticate(token)
    assert (found.id, found.tenant, found.scopes, found.limits) == (
        key.id,
        "acme",
        frozenset({"images:read"}),
        KeyLimits(images_per_minute=5),
    )


def test_wrong_secret_unknown_id_and_revoked_keys_are_refused(store: KeyStore) -> None:
    key, token = store.create("acme", "ci")
    other_secret = token[:-1] + ("A" if token[-1] != "A" else "B")
    unknown_id = "sf_" + "0" * 16 + token[19:]
    for bad in (other_secret, unknown_id, "sf_nope", ""):
        with pytest.raises(Unauthorized):
            store.authenticate(bad)
    revoked = store.revoke(key.id)
    assert revoked.revoked and revoked.revoked_at is not None
    with pytest.raises(Unauthorized, match="revoked"):
        store.authenticate(token)
    assert store.revoke(key.id).revoked_at == revoked.revoked_at  # idempotent
    assert store.get(key.id).revoked


def test_revocation_is_seen_at_once_by_another_replica(settings: Settings) -> None:
    replica_a, replica_b = KeyStore(connect(settings), settings), KeyStore(connect(settings), settings)
    key, token = replica_a.create("acme", "ci")
    assert replica_b.authenticate(token).id == key.id
    replica_a.revoke(key.id)
    with pytest.raises(Unauthorized, match="revoked"):
        replica_b.authenticate(token)


def test_list_get_and_not_found(store: KeyStore) -> None:
    a, _ = store.create("acme", "one")
    b, _ = store.create("beta", "two", ["admin"])
    assert [k.id for k in store.list()] == [a.id, b.id]
    assert [k.id for k in store.list("beta")] == [b.id]
    assert "secret_sha256" not in json.dumps(a.public())
    for missing in ("0" * 16, "not-an-id", "../../etc"):
        with pytest.raises(KeyNotFound):
            store.get(missing)


def test_seeding_from_a_file_plaintext_and_hashed(store: KeyStore, tmp_path: Path) -> None:
    plain_id, plain = store.create("scratch", "x")[0].id, store.create("scratch", "y")[1]
    hashed_token = store.create("scratch", "z")[1]
    hashed_id, digest = hash_token(hashed_token)
    for key in store.list():
        store.connection.delete(f"keys-test:apikey:{key.id}")  # start from an empty store
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {"key": plain, "tenant": "acme", "name": "ci", "scopes": ["images:read", "images:write"]},
                    {
                        "id": hashed_id,
                        "secret_sha256": digest,
                        "tenant": "ops",
                        "name": "admin",
                        "scopes": ["admin"],
                        "limits": {"rate_limit_rps": 2},
                    },
                ]
            }
        )
    )
    seed_keys(store, read_key_file(path))
    assert store.authenticate(plain).tenant == "acme"
    admin = store.authenticate(hashed_token)
    assert (admin.tenant, admin.scopes, admin.limits.rate_limit_rps) == ("ops", frozenset({"admin"}), 2)
    assert plain_id not in {k.id for k in store.list()}
    # Re-seeding keeps created_at; a revocation made meanwhile sticks.
    created = admin.created_at
    store.revoke(admin.id)
    seed_keys(store, read_key_file(path))
    assert store.get(admin.id).created_at == created and store.get(admin.id).revoked


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '[{"tenant": "acme"}]',
        '[{"tenant": "acme", "key": "sf_0123456789abcdef_SECRETSECRETSECRETSECRETSECRETSECRETSECR", "id": "x"}]',
        '{"keys": [{"tenant": "acme", "key": "sf_0123456789abcdef_SECRET", "scopes": ["root"]}]}',
    ],
)
def test_a_broken_keys_file_is_refused_without_echoing_secrets(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(InvalidRequest) as info:
        read_key_file(path)
    assert str(path) in info.value.message and "SECRET" not in info.value.message


def _cli(settings: Settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.admin", *args],
        cwd=REPO_ROOT,
        env=settings_env(settings),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_admin_cli_creates_lists_revokes_and_hashes(settings: Settings, store: KeyStore) -> None:
    created = _cli(settings, "keys", "create", "--tenant", "acme", "--name", "ci", "--images-per-minute", "30")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert "shown only this once" in created.stderr
    key = store.authenticate(token)
    assert key.limits.images_per_minute == 30 and key.scopes == frozenset({"images:read", "images:write"})
    admin = json.loads(
        _cli(settings, "keys", "create", "--json", "--tenant", "ops", "--name", "a", "--scope", "admin").stdout
    )
    assert admin["scopes"] == ["admin"] and admin["key"].startswith("sf_")
    listing = json.loads(_cli(settings, "keys", "list", "--json", "--tenant", "acme").stdout)
    assert [k["id"] for k in listing] == [key.id] and "key" not in listing[0]
    assert _cli(settings, "keys", "revoke", key.id).returncode == 0
    with pytest.raises(Unauthorized, match="revoked"):
        store.authenticate(token)
    hashing = _cli(settings, "keys", "hash", stdin=token + "\n")
    assert hashing.returncode == 0, hashing.stderr
    hashed = json.loads(hashing.stdout)
    assert (hashed["id"], hashed["secret_sha256"]) == hash_token(token)
    missing = _cli(settings, "keys", "show", "0" * 16)
    assert missing.returncode == 1 and "no API key" in missing.stderr and "Traceback" not in missing.stderr


def test_api_replicas_seed_the_keys_file_and_share_revocations(
    make_settings: SettingsFactory, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    from api.app import create_app
    from tests.support.api_server import serve_app
    from tests.support.keys import bearer

    _, admin_token = KeyStore(connect(make_settings()), make_settings()).create("ops", "seed", ["admin"])
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([{"key": admin_token, "tenant": "ops", "name": "admin", "scopes": ["admin"]}]))
    clean_redis.flushall()  # the file alone must bring the key back
    settings = make_settings(api_keys_file=keys_file, rate_limit_rps=0)
    with serve_app(create_app(settings)) as one, serve_app(create_app(settings)) as two:
        admin = bearer(admin_token)
        created = httpx.post(
            f"{one}/v1/admin/keys",
            json={"tenant": "acme", "name": "ci", "scopes": ["images:read"], "limits": {"images_per_minute": 7}},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["limits"] == {"images_per_minute": 7} and body["key"].startswith(f"sf_{body['id']}_")
        assert httpx.get(f"{two}/v1/models", headers=bearer(body["key"])).status_code == 200
        listed = httpx.get(f"{two}/v1/admin/keys", params={"tenant": "acme"}, headers=admin).json()["data"]
        assert [k["id"] for k in listed] == [body["id"]] and "key" not in listed[0]
        assert httpx.delete(f"{one}/v1/admin/keys/{body['id']}", headers=admin).json()["revoked"] is True
        refused = httpx.get(f"{two}/v1/models", headers=bearer(body["key"]))  # the other replica, at once
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]


def test_a_broken_keys_file_stops_the_api_at_start_up(make_settings: SettingsFactory, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('[{"tenant": "../etc", "key": "sf_0123456789abcdef_' + "A" * 43 + '"}]')
    settings = make_settings(api_keys_file=keys_file, api_port=free_port())
    proc = subprocess.run(
        [sys.executable, "-m", "api"],
        cwd=REPO_ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert f"API keys file {keys_file}, keys.0: tenant '../etc' is invalid" in proc.stderr + proc.stdout
    assert "A" * 43 not in proc.stderr + proc.stdout
