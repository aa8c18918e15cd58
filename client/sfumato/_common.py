"""What the sync and async clients share: configuration, request bodies, retry timing, error
parsing and the Server-Sent Events parser. No I/O here."""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sfumato.errors import APIError, error_class
from sfumato.types import JobEvent

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "SFUMATO_URL"
KEY_ENV = "SFUMATO_API_KEY"
#: The server said "later" (and when, in Retry-After): the only answers whose Retry-After is honoured.
RETRY_AFTER_STATUSES = frozenset({429, 503})
#: Statuses worth retrying: "later" above, plus a failed or lost answer (a crash's 500, a gateway's
#: 502 or 504). Repeating is safe: every submit carries an Idempotency-Key, so a retried submit
#: returns the job the first attempt may have created; the other calls are reads, a cancel (which
#: may then answer 409 if the first attempt already canceled) or the webhook secret.
RETRY_STATUSES = RETRY_AFTER_STATUSES | {500, 502, 504}
MAX_BACKOFF_S = 30.0
#: Longest a Retry-After is honoured for before giving up and raising instead.
MAX_RETRY_AFTER_S = 120.0


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: str | None
    timeout_s: float
    max_retries: int

    @classmethod
    def resolve(cls, base_url: str | None, api_key: str | None, timeout_s: float, max_retries: int) -> ClientConfig:
        """Arguments win over ``SFUMATO_URL`` / ``SFUMATO_API_KEY``; the URL defaults to a local API."""
        url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        return cls(url, api_key or os.environ.get(KEY_ENV) or None, timeout_s, max(0, max_retries))

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "sfumato-python/0.1"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def submit_body(prompt: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``POST /v1/images`` body: the prompt and every field that was given (None = default)."""
    return {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}


def new_idempotency_key() -> str:
    """Sent with every submit, so a retry after a lost answer never makes a second job."""
    return f"sdk-{uuid.uuid4().hex}"


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None when absent or invalid."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_to_datetime(value) if value else None
    return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def backoff_s(attempt: int, headers: Mapping[str, str] | None = None) -> float:
    """Delay before retry ``attempt + 1``: the server's Retry-After, else 0.5 s doubling, jittered."""
    if headers is not None:
        after = retry_after_s(headers)
        if after is not None:
            return min(after, MAX_RETRY_AFTER_S)
    base = min(0.5 * 2**attempt, MAX_BACKOFF_S)
    return base * (0.75 + random.random() / 2)


def retry_delay_s(status_code: int, attempt: int, headers: Mapping[str, str]) -> float | None:
    """Delay before retrying an answer with ``status_code``, or None when it is not retried.

    Only 429 and 503 honour ``Retry-After``; a 5xx that says nothing of when (or a proxy's page
    that says it by accident) backs off exponentially like a connection failure."""
    if status_code not in RETRY_STATUSES:
        return None
    return backoff_s(attempt, headers if status_code in RETRY_AFTER_STATUSES else None)


def api_error(status_code: int, headers: Mapping[str, str], body: bytes) -> APIError:
    """The typed error of an error response (the server's code, message and param)."""
    code, message, param = f"http_{status_code}", body[:200].decode("utf-8", "replace") or "error", None
    try:
        error = json.loads(body).get("error") or {}
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)
        param = error.get("param")
    except (ValueError, AttributeError):
        pass
    return error_class(status_code)(
        message,
        status_code=status_code,
        code=code,
        param=param,
        request_id=headers.get("x-request-id"),
        retry_after_s=retry_after_s(headers),
    )


class SSEParser:
    """Incremental ``text/event-stream`` parser: feed it lines, get :class:`JobEvent` s."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> JobEvent | None:
        """One line (without its newline); an event when a blank line completes one."""
        if not line:
            if not self._data:
                self._event = "message"
                return None
            raw = "\n".join(self._data)
            event = JobEvent(self._event, _json_or_text(raw), self._id)
            self._event, self._data = "message", []
            return event
        if line.startswith(":"):
            return None  # a comment (keepalive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def _json_or_text(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"text": raw}
    return value if isinstance(value, dict) else {"value": value}


def is_own_origin(url: str, base_url: str) -> bool:
    """True when ``url`` points at the API itself (its signed file URLs)."""
    return url.startswith(base_url + "/")
