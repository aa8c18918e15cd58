"""``/v1/admin/keys``: create, list, show and revoke API keys (scope ``admin``).

The same operations exist offline as ``sfumato-admin keys ...`` (``api/admin.py``), which talks
to Redis directly, e.g. to create the first admin key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from api.deps import Admin, Services
from api.errors import AUTHENTICATED, documented
from core.apikeys import KeyLimits
from core.schemas import KeyCreate, KeyCreated, KeyListView, KeyView

router = APIRouter(prefix="/v1/admin/keys", tags=["admin"])

KeyId = Annotated[str, Path(min_length=1, max_length=64, description="The key's public id (16 hex characters).")]


@router.post("", status_code=201, response_model=KeyCreated, responses=documented(*AUTHENTICATED))
async def create_key(body: KeyCreate, services: Services, _admin: Admin) -> KeyCreated:
    """A new key for ``tenant``. The response holds the key; it is stored only as a hash."""
    limits = KeyLimits(**body.limits.model_dump())
    key, token = await run_in_threadpool(
        services.keys.create, body.tenant, body.name, list(body.scopes), limits, body.priority
    )
    return KeyCreated(**key.public(), key=token)


@router.get("", response_model=KeyListView, responses=documented(*AUTHENTICATED))
def list_keys(
    services: Services,
    _admin: Admin,
    tenant: Annotated[str | None, Query(max_length=64, description="Only this tenant's keys")] = None,
) -> KeyListView:
    """Every key (or one tenant's), oldest first, revoked ones included."""
    return KeyListView(data=[KeyView(**k.public()) for k in services.keys.list(tenant)])


@router.get("/{key_id}", response_model=KeyView, responses=documented(404, *AUTHENTICATED))
def get_key(key_id: KeyId, services: Services, _admin: Admin) -> KeyView:
    return KeyView(**services.keys.get(key_id).public())


@router.delete("/{key_id}", response_model=KeyView, responses=documented(404, *AUTHENTICATED))
def revoke_key(key_id: KeyId, services: Services, _admin: Admin) -> KeyView:
    """Revoke the key: from the next request on, on every replica, it is a 401. Idempotent."""
    return KeyView(**services.keys.revoke(key_id).public())
