"""Signed webhooks: how Sfumato signs a delivery and how a receiver verifies it.

The scheme is `Standard Webhooks <https://www.standardwebhooks.com/>`_, so existing receiver
libraries work too. Every delivery carries three headers:

* ``webhook-id``: the delivery id (``msg_...``), the same on every retry of one delivery, so a
  receiver can process each event once;
* ``webhook-timestamp``: Unix seconds when this attempt was signed;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{body}"`` with the
  tenant's secret (``whsec_<base64>``, from ``GET /v1/webhooks/secret``).

A receiver calls :func:`verify` with the raw body (the bytes, before any JSON parsing) and
refuses the request on :class:`WebhookVerificationError`: a changed body, id or timestamp
breaks the signature, and a timestamp outside the tolerance (5 minutes) is a replay. To also
refuse an exact replay inside the window, keep a :class:`ReplayGuard`.

This module stands alone (the SDK depends on nothing of the server); the server signs with its
own ``core/webhook_signature.py``, and a test checks that what the server signs, this verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(Exception):
    """The delivery is not authentic or not fresh; answer it with a 4xx and ignore it."""


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise WebhookVerificationError("the webhook secret is not a valid whsec_ secret") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery and return its parsed JSON body.

    Raises :class:`WebhookVerificationError` when a header is missing, the timestamp is more
    than ``tolerance_s`` away from ``now`` (a replay, or a badly wrong clock), or no signature
    matches (compared in constant time).
    """
    payload = body.encode() if isinstance(body, str) else body
    msg_id = _header(headers, "webhook-id")
    raw_timestamp = _header(headers, "webhook-timestamp")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is outside the {tolerance_s} s tolerance (a replay?)")
    expected = sign(secret, msg_id, timestamp, payload).encode()
    offered = _header(headers, "webhook-signature").split()
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in offered):
        raise WebhookVerificationError("no webhook-signature matches (tampered body or wrong secret)")
    try:
        parsed: dict[str, Any] = json.loads(payload)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    return parsed


class ReplayGuard:
    """Refuses an attempt it has already accepted (same id and timestamp) within the tolerance.

    Sfumato's retries of one delivery keep the id but are signed afresh with a new timestamp,
    so they pass; a captured request sent again does not. Memory is bounded by the window.
    """

    def __init__(self, secret: str, tolerance_s: int = DEFAULT_TOLERANCE_S) -> None:
        self.secret = secret
        self.tolerance_s = tolerance_s
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def verify(self, body: bytes | str, headers: Mapping[str, str], now: float | None = None) -> dict[str, Any]:
        """:func:`verify`, then refuse an attempt seen before."""
        parsed = verify(body, headers, self.secret, tolerance_s=self.tolerance_s, now=now)
        current = time.time() if now is None else now
        attempt = (_header(headers, "webhook-id"), _header(headers, "webhook-timestamp"))
        with self._lock:
            for key, seen_at in list(self._seen.items()):
                if current - seen_at > 2 * self.tolerance_s:
                    del self._seen[key]
            if attempt in self._seen:
                raise WebhookVerificationError("this delivery attempt was already received (a replay)")
            self._seen[attempt] = current
        return parsed
