"""Fixtures every suite shares: an isolated environment and real, private components.

- The developer's ``SFUMATO_*`` variables never leak in; the Hugging Face hub is offline;
  ``SFUMATO_DATA_DIR`` points at a session temp dir; ``get_settings`` is cleared around each
  test.
- ``redis_server``: a private ``redis-server`` on a free loopback port for the whole run
  (never the shared one on 6379). ``clean_redis``: a client on it, emptied first.
- ``seaweed``: a private SeaweedFS with credentials, so S3 signatures are really checked, and
  the bucket ``seaweed.bucket`` created.
- ``make_settings(**overrides)``: Settings with a per-test data dir and the private Redis.
  ``s3_settings``: the same, storing images in the SeaweedFS bucket.

Every process is stopped by its PID when the session ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.config import Settings, get_settings
from devstack.redis_server import RedisServer, start_redis
from tests.support.env import without_sfumato
from tests.support.seaweed import SeaweedServer, start_seaweed

TEST_BUCKET = "sfumato-test"

#: Set for the whole run. HF_HUB_OFFLINE is read when huggingface_hub is imported, hence at
#: configure time (before collection imports anything) rather than in a fixture.
_SESSION_ENV = {
    "HF_HUB_OFFLINE": "1",
    # No S3 credential lookups against a cloud metadata endpoint that is not there.
    "AWS_EC2_METADATA_DISABLED": "true",
}

SettingsFactory = Callable[..., Settings]

_ENV_PATCH = pytest.StashKey[pytest.MonkeyPatch]()


def pytest_configure(config: pytest.Config) -> None:
    patch = pytest.MonkeyPatch()
    for name in os.environ.keys() - without_sfumato(os.environ).keys():
        patch.delenv(name)
    for name, value in _SESSION_ENV.items():
        patch.setenv(name, value)
    config.stash[_ENV_PATCH] = patch


def pytest_unconfigure(config: pytest.Config) -> None:
    patch = config.stash.get(_ENV_PATCH, None)
    if patch is not None:
        patch.undo()


@pytest.fixture(scope="session", autouse=True)
def session_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``SFUMATO_DATA_DIR`` for anything that builds Settings from the environment."""
    data_dir = tmp_path_factory.mktemp("sfumato-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFUMATO_DATA_DIR", str(data_dir))
        yield data_dir


@pytest.fixture(autouse=True)
def _fresh_settings_cache() -> Iterator[None]:
    """Each test reads the environment anew through ``get_settings``."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis for the whole run, on a free port of 127.0.0.1, stopped by PID."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


def _private_client(server: RedisServer) -> redis.Redis:
    client = redis.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)
    # Belt and braces before any flush: the server answering is the one this run started.
    served_by = int(client.info("server")["process_id"])
    if served_by != server.pid:
        raise RuntimeError(f"{server.url} is served by pid {served_by}, not our redis-server {server.pid}")
    return client


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on the private Redis, emptied (FLUSHALL) before the test."""
    client = _private_client(redis_server)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A private SeaweedFS (S3 with real signature checks) and its bucket ``seaweed.bucket``."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"), bucket=TEST_BUCKET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_settings(request: pytest.FixtureRequest, tmp_path: Path) -> SettingsFactory:
    """``make_settings(**overrides) -> Settings``.

    Defaults: ``data_dir`` under this test's tmp dir and, unless ``redis_url`` is overridden,
    the private Redis (started on first use, so tests that never touch Redis don't start it).
    Overrides are Settings field names; they win over the environment.
    """

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": tmp_path / "data"}
        if "redis_url" not in overrides:
            values["redis_url"] = request.getfixturevalue("redis_server").url
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def s3_settings(make_settings: SettingsFactory, seaweed: SeaweedServer) -> Settings:
    """Settings that store images in the SeaweedFS bucket with its real credentials."""
    return make_settings(
        storage="s3",
        s3_bucket=seaweed.bucket,
        s3_endpoint_url=seaweed.endpoint_url,
        s3_region=seaweed.region,
        s3_access_key_id=seaweed.access_key,
        s3_secret_access_key=seaweed.secret_key,
    )
