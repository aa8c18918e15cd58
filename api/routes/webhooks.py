"""``/v1/webhooks/secret``: the tenant's webhook signing secret (read it, or rotate it)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import Services, Writer
from api.errors import AUTHENTICATED, documented

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecret(BaseModel):
    secret: str = Field(description="whsec_...: verify deliveries with sfumato.webhooks.verify(body, headers, secret).")
    scheme: str = Field(
        default="standard-webhooks-v1", description="Signature scheme (https://www.standardwebhooks.com/)."
    )


@router.get("/secret", response_model=WebhookSecret, responses=documented(*AUTHENTICATED))
async def get_webhook_secret(services: Services, principal: Writer) -> WebhookSecret:
    """The secret that signs this tenant's webhook deliveries (made on first use)."""
    return WebhookSecret(secret=await run_in_threadpool(services.webhooks.secret, principal.tenant))


@router.post("/secret", response_model=WebhookSecret, responses=documented(*AUTHENTICATED))
async def rotate_webhook_secret(services: Services, principal: Writer) -> WebhookSecret:
    """Replace the secret; deliveries from now on are signed with the new one only."""
    return WebhookSecret(secret=await run_in_threadpool(services.webhooks.secret, principal.tenant, rotate=True))
