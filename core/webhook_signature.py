"""How the server signs a webhook delivery (Standard Webhooks: https://www.standardwebhooks.com/).

Every delivery carries :data:`ID_HEADER` (the delivery id, the same on every retry),
:data:`TIMESTAMP_HEADER` (Unix seconds of this attempt) and :data:`SIGNATURE_HEADER`
(``v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{body}"`` with the tenant's
``whsec_<base64>`` secret).

This is the server's half of the contract; receivers verify with the client SDK's
``sfumato.webhooks.verify`` (or any Standard Webhooks library). The two are separate code on
purpose: the server images do not ship the SDK and the SDK does not depend on the server, so
tests/unit/test_webhook_signature.py checks that what this module signs, the SDK verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


def new_secret(raw: bytes) -> str:
    """A tenant secret (``whsec_<base64>``) made from ``raw`` random bytes."""
    return SECRET_PREFIX + base64.b64encode(raw).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The :data:`SIGNATURE_HEADER` value for one delivery attempt.

    Raises ``ValueError`` when ``secret`` is not ``whsec_`` followed by valid base64.
    """
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one delivery attempt."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, msg_id, timestamp, body),
    }
