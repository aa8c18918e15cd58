"""``/v1/files/{key}``: images on the local-disk store, behind HMAC-signed expiring URLs.

With S3 storage clients get presigned S3 URLs instead and this route answers 404.
"""

from __future__ import annotations

import mimetypes
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from api.deps import Services
from core.errors import JobNotFound
from core.storage import LocalStore

router = APIRouter(prefix="/v1/files", tags=["files"], include_in_schema=False)


@router.get("/{key:path}")
def get_file(
    key: str,
    services: Services,
    expires: Annotated[int, Query()],
    signature: Annotated[str, Query(max_length=128)],
) -> FileResponse:
    store = services.store
    if not isinstance(store, LocalStore):
        raise JobNotFound("files are served by the object store", param="key")
    path = store.open_signed(key, expires, signature)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=60"})
