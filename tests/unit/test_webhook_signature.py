"""The server signs webhooks (core/webhook_signature.py) and the SDK verifies them
(sfumato/webhooks.py): two separate implementations of one contract, held together here."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import pytest

from core.webhook_signature import SECRET_PREFIX, new_secret, sign, signed_headers
from sfumato import webhooks as sdk

NOW = 1_700_000_000
Tamper = Callable[[bytes, dict[str, str], str], tuple[bytes, dict[str, str], str]]


def _delivery() -> tuple[str, bytes, dict[str, str]]:
    secret = new_secret(secrets.token_bytes(32))
    body = json.dumps({"id": "msg_1", "type": "image.succeeded", "data": {"id": "job"}}).encode()
    return secret, body, signed_headers(secret, "msg_1", NOW, body)


def test_the_sdk_and_the_server_agree_on_the_scheme() -> None:
    assert SECRET_PREFIX == sdk.SECRET_PREFIX
    secret, body, _ = _delivery()
    assert sign(secret, "msg_1", NOW, body) == sdk.sign(secret, "msg_1", NOW, body)


def test_a_delivery_signed_by_the_server_verifies_with_the_sdk() -> None:
    secret, body, headers = _delivery()
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert sdk.verify(body, headers, secret, now=NOW + 5)["type"] == "image.succeeded"
    assert sdk.ReplayGuard(secret).verify(body, headers, now=NOW)["data"] == {"id": "job"}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, headers, secret: (body.replace(b"succeeded", b"failed"), headers, secret),
        lambda body, headers, secret: (body, {**headers, "webhook-id": "msg_2"}, secret),
        lambda body, headers, secret: (body, {**headers, "webhook-timestamp": str(NOW + 1)}, secret),
        lambda body, headers, secret: (body, headers, new_secret(secrets.token_bytes(32))),
    ],
    ids=["body", "id", "timestamp", "secret"],
)
def test_a_tampered_delivery_does_not_verify(tamper: Tamper) -> None:
    secret, body, headers = _delivery()
    body, headers, secret = tamper(body, headers, secret)
    with pytest.raises(sdk.WebhookVerificationError):
        sdk.verify(body, headers, secret, now=NOW)


def test_a_malformed_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        sign("whsec_not base64!", "msg_1", NOW, b"{}")
