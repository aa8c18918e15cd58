"""core.storage S3Store against a real SeaweedFS that checks SigV4 signatures and expiry."""

from __future__ import annotations

import secrets

import httpx
import pytest

from core.config import Settings
from core.errors import InvalidSignature, StorageUnavailable
from core.storage import S3Store, build_store, image_key
from devstack.net import free_port
from tests.conftest import SettingsFactory
from tests.support.processes import wait_until
from tests.support.seaweed import SeaweedServer

PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(2048)


def fresh_key(ext: str = "png") -> str:
    return image_key("acme", secrets.token_hex(16), 0, ext)


@pytest.fixture
def store(s3_settings: Settings) -> S3Store:
    store = build_store(s3_settings)
    assert isinstance(store, S3Store)
    return store


def test_put_then_presigned_get_returns_bytes_and_type(store: S3Store) -> None:
    key = fresh_key()
    store.put(key, PNG, "image/png")
    response = httpx.get(store.url(key, 300), timeout=10)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"


@pytest.mark.parametrize(("ext", "content_type"), [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_content_type_is_kept(store: S3Store, ext: str, content_type: str) -> None:
    key = fresh_key(ext)
    store.put(key, b"bytes", content_type)
    assert httpx.get(store.url(key, 300), timeout=10).headers["content-type"] == content_type


def test_exists(store: S3Store) -> None:
    key = fresh_key()
    assert not store.exists(key)
    store.put(key, PNG, "image/png")
    assert store.exists(key)


def test_unsigned_get_is_refused(store: S3Store, seaweed: SeaweedServer) -> None:
    key = fresh_key()
    store.put(key, PNG, "image/png")
    response = httpx.get(f"{seaweed.endpoint_url}/{seaweed.bucket}/{key}", timeout=10)
    assert response.status_code == 403


def test_tampered_presigned_url_is_refused(store: S3Store) -> None:
    mine, other = fresh_key(), fresh_key()
    store.put(mine, PNG, "image/png")
    store.put(other, b"other", "image/png")
    forged = store.url(mine, 300).replace(mine, other)
    assert httpx.get(forged, timeout=10).status_code == 403


def test_wrong_secret_is_refused(make_settings: SettingsFactory, s3_settings: Settings) -> None:
    bad = S3Store(make_settings(**{**s3_settings.model_dump(), "s3_secret_access_key": "not-the-secret"}))
    key = fresh_key()
    with pytest.raises(StorageUnavailable, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        bad.put(key, PNG, "image/png")
    # Refused is not "absent": exists() must not turn an auth failure into False.
    with pytest.raises(StorageUnavailable):
        bad.exists(key)
    with pytest.raises(StorageUnavailable):
        bad.ensure_bucket()


def test_expired_presigned_url_is_refused(store: S3Store) -> None:
    key = fresh_key()
    store.put(key, PNG, "image/png")
    short = store.url(key, 1)
    # X-Amz-Date has one-second resolution, so a 1 s URL may be dead on arrival: poll until
    # refused, with a deadline, instead of asserting it ever worked.
    responses: list[httpx.Response] = []

    def refused() -> bool:
        responses.append(httpx.get(short, timeout=10))
        return responses[-1].status_code != 200

    wait_until(refused, 15, "a 1 s presigned URL to be refused")
    response = responses[-1]
    assert response.status_code == 403
    assert "expired" in response.text.lower()
    assert httpx.get(store.url(key, 300), timeout=10).status_code == 200  # the object is fine


def test_traversal_key_refused_before_upload(store: S3Store) -> None:
    with pytest.raises(InvalidSignature):
        store.put("acme/../other/0.png", PNG, "image/png")


def test_ensure_bucket_creates_once(
    make_settings: SettingsFactory, s3_settings: Settings, seaweed: SeaweedServer
) -> None:
    bucket = "sfumato-" + secrets.token_hex(4)
    store = S3Store(make_settings(**{**s3_settings.model_dump(), "s3_bucket": bucket}))
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    seaweed.client().head_bucket(Bucket=bucket)
    key = fresh_key()
    store.put(key, PNG, "image/png")
    assert store.exists(key)


def test_build_store_creates_bucket_when_told(
    make_settings: SettingsFactory, s3_settings: Settings, seaweed: SeaweedServer
) -> None:
    bucket = "sfumato-" + secrets.token_hex(4)
    settings = make_settings(**{**s3_settings.model_dump(), "s3_bucket": bucket, "s3_create_bucket": True})
    assert isinstance(build_store(settings), S3Store)
    seaweed.client().head_bucket(Bucket=bucket)


def test_build_store_picks_s3_when_bucket_set(make_settings: SettingsFactory, seaweed: SeaweedServer) -> None:
    settings = make_settings(
        s3_bucket=seaweed.bucket,
        s3_endpoint_url=seaweed.endpoint_url,
        s3_access_key_id=seaweed.access_key,
        s3_secret_access_key=seaweed.secret_key,
    )
    assert settings.storage == "auto"
    store = build_store(settings)
    assert isinstance(store, S3Store)
    key = fresh_key()
    store.put(key, PNG, "image/png")
    assert store.exists(key)


def test_unreachable_endpoint_is_storage_unavailable(make_settings: SettingsFactory, s3_settings: Settings) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = S3Store(make_settings(**{**s3_settings.model_dump(), "s3_endpoint_url": dead}))
    with pytest.raises(StorageUnavailable):
        store.put(fresh_key(), PNG, "image/png")
    with pytest.raises(StorageUnavailable):
        store.exists(fresh_key())
