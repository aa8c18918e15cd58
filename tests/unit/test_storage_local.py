"""core.storage LocalStore: key layout, traversal refusal, and HMAC-signed expiring URLs."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from pydantic import SecretStr

from core.config import Settings
from core.errors import InvalidSignature
from core.storage import LocalStore, build_store, check_key, image_key, local_signing_key

KEY = b"unit-test-signing-key"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "images", KEY)


def signed_parts(url: str) -> tuple[str, int, str]:
    """(key, expires, signature) from a URL as the API route would read it."""
    parts = urlsplit(url)
    assert parts.path.startswith("/v1/files/")
    query = parse_qs(parts.query)
    return unquote(parts.path.removeprefix("/v1/files/")), int(query["expires"][0]), query["signature"][0]


def test_key_layout() -> None:
    assert image_key("acme", "0123abcd", 0, "png") == "acme/0123abcd/0.png"
    assert image_key("acme", "0123abcd", 3, "webp") == "acme/0123abcd/3.webp"


def test_put_writes_under_the_key(store: LocalStore, tmp_path: Path) -> None:
    key = image_key("acme", "job1", 2, "jpeg")
    assert not store.exists(key)
    store.put(key, b"\xff\xd8jpeg", "image/jpeg")
    assert (tmp_path / "images" / "acme" / "job1" / "2.jpeg").read_bytes() == b"\xff\xd8jpeg"
    assert store.exists(key)
    assert not list((tmp_path / "images").rglob("*.tmp"))  # atomic replace left nothing behind


def test_put_same_key_twice_overwrites(store: LocalStore) -> None:
    key = image_key("acme", "job1", 0, "png")
    store.put(key, b"first", "image/png")
    store.put(key, b"second", "image/png")
    assert (store.root / key).read_bytes() == b"second"


@pytest.mark.parametrize(
    "key",
    [
        "../secret.png",
        "acme/../../etc/passwd",
        "/etc/passwd",
        "acme//0.png",
        "acme/job/..",
        "acme/job/.hidden",
        "acme\\job\\0.png",
        "acme/job/0.png\n",
        "acme/job/0 .png",
        "",
    ],
)
def test_traversal_and_odd_keys_refused(store: LocalStore, key: str) -> None:
    with pytest.raises(InvalidSignature):
        check_key(key)
    with pytest.raises(InvalidSignature):
        store.put(key, b"x", "image/png")
    with pytest.raises(InvalidSignature):
        store.open_signed(key, int(time.time()) + 60, store._signature(key, int(time.time()) + 60))


@pytest.mark.parametrize("tenant", ["..", "a/b", ""])
def test_image_key_refuses_bad_parts(tenant: str) -> None:
    with pytest.raises(InvalidSignature):
        image_key(tenant, "job", 0, "png")


def test_signed_url_round_trip(store: LocalStore) -> None:
    key = image_key("acme", "job1", 0, "png")
    store.put(key, b"png-bytes", "image/png")
    issued_from = int(time.time())
    url_key, expires, signature = signed_parts(store.url(key, 60))
    issued_by = int(time.time())
    assert url_key == key
    assert issued_from + 60 <= expires <= issued_by + 60  # expiry = issue time + the 60 s asked for
    assert store.open_signed(url_key, expires, signature).read_bytes() == b"png-bytes"


def test_tampered_signature_refused(store: LocalStore) -> None:
    key = image_key("acme", "job1", 0, "png")
    store.put(key, b"x", "image/png")
    url_key, expires, signature = signed_parts(store.url(key, 60))
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    with pytest.raises(InvalidSignature) as info:
        store.open_signed(url_key, expires, flipped)
    assert info.value.param == "signature"


def test_extended_expiry_refused(store: LocalStore) -> None:
    key = image_key("acme", "job1", 0, "png")
    store.put(key, b"x", "image/png")
    url_key, expires, signature = signed_parts(store.url(key, 60))
    with pytest.raises(InvalidSignature):
        store.open_signed(url_key, expires + 3600, signature)


def test_signature_for_another_key_refused(store: LocalStore) -> None:
    mine, theirs = image_key("acme", "job1", 0, "png"), image_key("other", "job2", 0, "png")
    store.put(mine, b"mine", "image/png")
    store.put(theirs, b"theirs", "image/png")
    _, expires, signature = signed_parts(store.url(mine, 60))
    with pytest.raises(InvalidSignature):
        store.open_signed(theirs, expires, signature)


def test_signature_from_another_signing_key_refused(store: LocalStore, tmp_path: Path) -> None:
    key = image_key("acme", "job1", 0, "png")
    store.put(key, b"x", "image/png")
    other = LocalStore(store.root, b"another-deployment")
    _, expires, signature = signed_parts(other.url(key, 60))
    with pytest.raises(InvalidSignature):
        store.open_signed(key, expires, signature)


def test_expired_url_refused(store: LocalStore) -> None:
    key = image_key("acme", "job1", 0, "png")
    store.put(key, b"x", "image/png")
    _, expires, signature = signed_parts(store.url(key, 60))
    assert store.open_signed(key, expires, signature, now=expires).is_file()  # valid up to the second
    with pytest.raises(InvalidSignature) as info:
        store.open_signed(key, expires, signature, now=expires + 1)
    assert info.value.param == "expires"


def test_valid_signature_for_missing_object_refused(store: LocalStore) -> None:
    key = image_key("acme", "never-written", 0, "png")
    _, expires, signature = signed_parts(store.url(key, 60))
    with pytest.raises(InvalidSignature):
        store.open_signed(key, expires, signature)


def test_build_store_local_with_configured_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, url_signing_key=SecretStr("configured"))
    store = build_store(settings)
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "images"
    key = image_key("acme", "job1", 0, "png")
    store.put(key, b"x", "image/png")
    _, expires, signature = signed_parts(LocalStore(tmp_path / "images", b"configured").url(key, 60))
    assert store.open_signed(key, expires, signature).is_file()


def test_generated_signing_key_is_stable_and_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = local_signing_key(settings)
    assert first == local_signing_key(settings)  # a second API process on this disk agrees
    key_file = tmp_path / "url-signing.key"
    assert key_file.stat().st_mode & 0o077 == 0
    assert len(first) >= 32
