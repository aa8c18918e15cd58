"""Typed errors of the SDK. API errors carry the server's stable ``code`` (README, "The API")."""

from __future__ import annotations

from typing import Any


class SfumatoError(Exception):
    """Base class of everything the SDK raises on purpose."""


class APIError(SfumatoError):
    """The server answered with an error: ``{"error": {"code", "message", "param"}}``."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str,
        param: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.message = message
        self.status_code = status_code
        self.code = code
        self.param = param
        self.request_id = request_id
        self.retry_after_s = retry_after_s


class AuthenticationError(APIError):
    """401: no API key, or a malformed, unknown or revoked one."""


class PermissionDeniedError(APIError):
    """403: the key lacks the scope, or a signed URL is forged or expired."""


class NotFoundError(APIError):
    """404: no such job (another tenant's job looks the same)."""


class ConflictError(APIError):
    """409: the job's state does not allow it, or an Idempotency-Key was reused with another body."""


class InvalidRequestError(APIError):
    """413/422: the request breaks a limit; ``param`` names the field."""


class RateLimitError(APIError):
    """429: a per-key limit or the queue cap (``param`` names it); retried automatically first."""


class ServiceUnavailableError(APIError):
    """503 (queue or storage unavailable) or 504 (not ready in time); both are retried first
    (503 after its ``Retry-After``)."""


class ServerError(APIError):
    """Any other 5xx; 500 and 502 are retried first (safe: every submit carries an Idempotency-Key)."""


class APIConnectionError(SfumatoError):
    """The server could not be reached (after the retries)."""


class WaitTimeoutError(SfumatoError):
    """The job did not end within the time the caller allowed; it keeps running on the server."""

    def __init__(self, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailedError(SfumatoError):
    """The job ended ``failed`` (``code``: generation_failed, timeout, out_of_memory ...) or
    ``canceled`` (``code`` canceled)."""

    def __init__(self, job: Any) -> None:
        error = getattr(job, "error", None)
        self.job = job
        self.code = error.code if error is not None else job.status
        message = error.message if error is not None else f"the job was {job.status}"
        super().__init__(f"job {job.id} {job.status}: {self.code}: {message}")


_BY_STATUS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: ServiceUnavailableError,
}


def error_class(status_code: int) -> type[APIError]:
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return ServerError if status_code >= 500 else APIError
