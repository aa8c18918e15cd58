"""Storage settings: Redis, object storage and the local data folder."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from core.settings.base import SettingsGroup, shown_default


def _default_data_dir() -> Path:
    return Path.home() / ".cache" / "sfumato"


class StorageSettings(SettingsGroup):
    """Where state lives: Redis (the job queue and every job's record), the store of generated
    images (S3-compatible object storage or local disk) and the local data folder (caches).

    Read by the API and the worker alike: both must point at the same Redis and the same store,
    since the worker writes the images and the API signs their URLs.
    """

    section: ClassVar[str] = "Storage"

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis holding the job queue.")
    redis_timeout_s: float = Field(default=2.0, gt=0, description="Socket connect/read timeout towards Redis.")
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Caches (built-in model files, the local URL signing key) and, with local storage, the images.",
        json_schema_extra=shown_default("`~/.cache/sfumato`"),
    )
    storage: Literal["auto", "local", "s3"] = Field(
        default="auto", description="`auto` uses S3 when `SFUMATO_S3_BUCKET` is set, else local disk."
    )
    s3_bucket: str | None = Field(default=None, description="Bucket for generated images.")
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, SeaweedFS, R2...).")
    s3_region: str = Field(default="us-east-1", description="S3 region used for signing.")
    s3_access_key_id: str | None = Field(
        default=None, description="S3 access key (unset: the AWS credential chain: environment, profile, role)."
    )
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key.")
    s3_path_style: bool = Field(default=True, description="Path-style addressing (needed by most self-hosted S3).")
    s3_create_bucket: bool = Field(default=False, description="Create the bucket at start-up if missing.")
    local_storage_dir: Path | None = Field(
        default=None,
        description="Folder of the local image store (used when the storage is local).",
        json_schema_extra=shown_default("`data_dir/images`"),
    )
    url_signing_key: SecretStr | None = Field(
        default=None,
        description="HMAC key that signs local-disk image URLs; every API replica must share it. Unset: a random "
        "key generated once into `data_dir/url-signing.key` (enough when all API processes share that folder).",
    )
    url_expiry_s: int = Field(
        default=900, ge=1, le=7 * 24 * 3600, description="Lifetime of image URLs (presigned S3 or signed local)."
    )

    @property
    def storage_backend(self) -> Literal["local", "s3"]:
        """The backend in force once 'auto' is resolved."""
        if self.storage == "auto":
            return "s3" if self.s3_bucket else "local"
        return self.storage

    @property
    def resolved_local_storage_dir(self) -> Path:
        """Where local images are kept: explicit, or data_dir/images."""
        return self.local_storage_dir or self.data_dir / "images"
