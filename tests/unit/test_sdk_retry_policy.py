"""Which answers the SDK retries, and how long it waits: only 429 and 503 honour Retry-After."""

from __future__ import annotations

import pytest

from sfumato._common import retry_delay_s


@pytest.mark.parametrize("status", [429, 503])
def test_later_answers_wait_what_retry_after_says(status: int) -> None:
    assert retry_delay_s(status, 0, {"retry-after": "7"}) == 7.0


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_back_off_and_ignore_retry_after(status: int) -> None:
    """A proxy's error page may carry any Retry-After: a 5xx backs off 0.5 s doubling, jittered."""
    first, second = retry_delay_s(status, 0, {"retry-after": "3600"}), retry_delay_s(status, 1, {})
    assert first is not None and 0.375 <= first <= 0.625
    assert second is not None and 0.75 <= second <= 1.25


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 501, 505])
def test_other_answers_are_not_retried(status: int) -> None:
    assert retry_delay_s(status, 0, {"retry-after": "1"}) is None
