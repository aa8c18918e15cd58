"""The SDK's pure parts: SSE parsing, Retry-After and backoff, error typing, webhook signatures."""

from __future__ import annotations

import base64
import json

import pytest

from sfumato import errors
from sfumato._common import SSEParser, api_error, backoff_s, retry_after_s, submit_body
from sfumato.webhooks import ReplayGuard, WebhookVerificationError, sign, verify

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def _parse(text: str) -> list[tuple[str, dict, str | None]]:
    parser, out = SSEParser(), []
    for line in text.split("\n"):
        event = parser.feed(line)
        if event is not None:
            out.append((event.event, event.data, event.id))
    return out


def test_sse_parser_reads_events_ignores_comments_and_joins_data_lines() -> None:
    stream = (
        'event: queued\nid: 1\ndata: {"queue_position": 2}\n\n'
        ": keepalive\n\n"
        'event: progress\nid: 2\ndata: {"step": 1,\ndata: "total": 4}\n\n'
        'event: succeeded\nid: 3\ndata: {"id": "j"}\n\n'
    )
    assert _parse(stream) == [
        ("queued", {"queue_position": 2}, "1"),
        ("progress", {"step": 1, "total": 4}, "2"),
        ("succeeded", {"id": "j"}, "3"),
    ]


def test_retry_after_is_honoured_and_backoff_grows_without_it() -> None:
    assert retry_after_s({"retry-after": "7"}) == 7.0
    assert retry_after_s({}) is None
    assert backoff_s(0, {"retry-after": "3"}) == 3.0
    assert backoff_s(0, {"retry-after": "100000"}) == 120.0  # capped
    assert 0.375 <= backoff_s(0) <= 0.625 and 1.5 <= backoff_s(2) <= 2.5


def test_api_errors_are_typed_and_carry_the_server_code() -> None:
    body = json.dumps({"error": {"code": "queue_full", "message": "full", "param": "queue_depth"}}).encode()
    exc = api_error(429, {"retry-after": "2", "x-request-id": "r1"}, body)
    assert isinstance(exc, errors.RateLimitError)
    assert (exc.code, exc.param, exc.retry_after_s, exc.request_id) == ("queue_full", "queue_depth", 2.0, "r1")
    assert isinstance(api_error(404, {}, b"not json"), errors.NotFoundError)
    assert isinstance(api_error(500, {}, b""), errors.ServerError)


def test_submit_body_leaves_out_unset_fields() -> None:
    assert submit_body("x", {"n": 2, "seed": None, "steps": 3}) == {"prompt": "x", "n": 2, "steps": 3}


def _signed(body: bytes, timestamp: int, msg_id: str = "msg_1") -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(SECRET, msg_id, timestamp, body),
    }


def test_a_signed_delivery_verifies_and_a_tampered_one_does_not() -> None:
    body = b'{"type":"image.succeeded"}'
    headers = _signed(body, 1_000_000)
    assert verify(body, headers, SECRET, now=1_000_010) == {"type": "image.succeeded"}
    for tampered_body, tampered_headers in (
        (b'{"type":"image.failed"}', headers),
        (body, {**headers, "webhook-id": "msg_2"}),
        (body, {**headers, "webhook-timestamp": "1000001"}),
        (body, {**headers, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}),
    ):
        with pytest.raises(WebhookVerificationError):
            verify(tampered_body, tampered_headers, SECRET, now=1_000_010)
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, other, now=1_000_010)


def test_old_deliveries_and_exact_replays_are_refused() -> None:
    body = b"{}"
    headers = _signed(body, 1_000_000)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(body, headers, SECRET, now=1_000_000 + 301)
    guard = ReplayGuard(SECRET)
    guard.verify(body, headers, now=1_000_001)
    with pytest.raises(WebhookVerificationError, match="already received"):
        guard.verify(body, headers, now=1_000_002)
    # A genuine retry of the same delivery is signed afresh (new timestamp): accepted.
    guard.verify(body, _signed(body, 1_000_030), now=1_000_031)
