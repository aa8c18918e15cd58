"""Where generated images live: one interface, two backends (S3-compatible and local disk).

Keys are ``{tenant}/{job_id}/{index}.{ext}``: a job re-run after a crash writes the same keys,
so a client never sees two results for one job. Clients get short-lived URLs only: S3
presigned GETs, or for local disk an HMAC-signed, expiring path served by the API.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from core.config import Settings
from core.errors import InvalidSignature, StorageUnavailable

log = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def image_key(tenant: str, job_id: str, index: int, ext: str) -> str:
    """The storage key of image ``index`` of a job; stable across retries."""
    key = f"{tenant}/{job_id}/{index}.{ext}"
    check_key(key)
    if key.count("/") != 2:  # a "/" in tenant or job id would blur whose image this is
        raise InvalidSignature(f"invalid storage key {key!r}: tenant and job id are one segment each", param="key")
    return key


def check_key(key: str) -> None:
    """Refuse keys that could escape the store (``..``, absolute paths, odd characters)."""
    parts = key.split("/")
    # fullmatch: with match(), "$" also accepts a trailing newline ("0.png\n").
    if not parts or any(not _KEY_PART.fullmatch(p) or ".." in p for p in parts):
        raise InvalidSignature(f"invalid storage key {key!r}", param="key")


class ObjectStore(Protocol):
    """What the worker writes to and the API hands out URLs for."""

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def url(self, key: str, expires_s: int) -> str:
        """A URL (absolute, or a path on the API for local disk) valid for ``expires_s``."""
        ...

    def exists(self, key: str) -> bool: ...


class LocalStore:
    """Images on local disk, for a single machine (``make run``). URLs are signed API paths."""

    def __init__(self, root: Path, signing_key: bytes) -> None:
        self.root = root
        self._signing_key = signing_key

    def _path(self, key: str) -> Path:
        check_key(key)
        return self.root / key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half an image

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def get(self, key: str) -> bytes:
        """The object's bytes (the API inlines images this way, e.g. OpenAI's b64_json)."""
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageUnavailable(f"reading {key} failed: {type(exc).__name__}") from exc

    def _signature(self, key: str, expires: int) -> str:
        msg = f"{key}\n{expires}".encode()
        return hmac.new(self._signing_key, msg, hashlib.sha256).hexdigest()

    def url(self, key: str, expires_s: int) -> str:
        expires = int(time.time()) + expires_s
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return f"/v1/files/{quote(key)}?{query}"

    def open_signed(self, key: str, expires: int, signature: str, now: float | None = None) -> Path:
        """The file behind a signed URL; :class:`InvalidSignature` if forged, expired or absent."""
        check_key(key)
        if not hmac.compare_digest(self._signature(key, expires), signature):
            raise InvalidSignature("the URL signature does not match", param="signature")
        if (now if now is not None else time.time()) > expires:
            raise InvalidSignature("the URL has expired; fetch the job again for a fresh one", param="expires")
        path = self._path(key)
        if not path.is_file():
            raise InvalidSignature("no such object", param="key")
        return path


class S3Store:
    """Any S3-compatible store (AWS, MinIO, SeaweedFS, R2) through boto3."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        if not settings.s3_bucket:
            raise StorageUnavailable("SFUMATO_S3_BUCKET is required for S3 storage", param="s3_bucket")
        self.bucket = settings.s3_bucket
        self._region = settings.s3_region
        secret = settings.s3_secret_access_key
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if settings.s3_path_style else "auto"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=3,
                read_timeout=10,
            ),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (dev stacks and tests).

        Only a 404 leads to creation; refused credentials or an unreachable endpoint are a
        :class:`StorageUnavailable` (creating would fail the same way, less clearly).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _is_not_found(exc):
                raise StorageUnavailable(f"bucket {self.bucket} is not accessible: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"bucket {self.bucket} is not accessible: {describe_error(exc)}") from exc
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self._region != "us-east-1":  # us-east-1 is the one region that refuses a constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":  # lost a race
                raise StorageUnavailable(f"bucket {self.bucket} could not be created: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"bucket {self.bucket} could not be created: {describe_error(exc)}") from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"upload of {key} failed: {describe_error(exc)}") from exc

    def exists(self, key: str) -> bool:
        """True if the object is there; False on 404; :class:`StorageUnavailable` otherwise.

        A refused or unreachable store is not "absent": a caller that re-ran work on False
        would redo it for every request while the store is down.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise StorageUnavailable(f"lookup of {key} failed: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"lookup of {key} failed: {describe_error(exc)}") from exc
        return True

    def get(self, key: str) -> bytes:
        """The object's bytes (the API inlines images this way, e.g. OpenAI's b64_json)."""
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            return bytes(response["Body"].read())
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"reading {key} failed: {describe_error(exc)}") from exc

    def url(self, key: str, expires_s: int) -> str:
        return str(
            self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )
        )


def describe_error(exc: Exception) -> str:
    """What went wrong, for a message a client may see (failed jobs): the S3 error code or the
    exception type, never the exception text, which names the endpoint's internal address."""
    log.warning("object store error: %s", exc)  # the full text stays in the operator's logs
    response = getattr(exc, "response", None) or {}
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return f"{code or type(exc).__name__}"


def _is_not_found(exc: Exception) -> bool:
    """A boto ClientError meaning 404 (HEAD requests carry only the status, no error code)."""
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 404 or code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def local_signing_key(settings: Settings) -> bytes:
    """The HMAC key for local URLs; without one configured, derive a per-data-dir secret file."""
    if settings.url_signing_key is not None:
        return settings.url_signing_key.get_secret_value().encode()
    key_file = settings.data_dir / "url-signing.key"
    if not key_file.exists():
        import secrets

        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_hex(32))
        key_file.chmod(0o600)
    return key_file.read_text().strip().encode()


def build_store(settings: Settings) -> LocalStore | S3Store:
    """The store Settings ask for. S3 creates its bucket only when told to."""
    if settings.storage_backend == "s3":
        store = S3Store(settings)
        if settings.s3_create_bucket:
            store.ensure_bucket()
        return store
    return LocalStore(settings.resolved_local_storage_dir, local_signing_key(settings))
