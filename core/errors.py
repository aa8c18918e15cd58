"""The one error hierarchy of Sfumato.

Every error a client can see is a :class:`ServiceError` with a stable ``code`` (part of the
API contract), a human ``message`` and, where one field is to blame, the ``param``. The API maps
each class to an HTTP status in exactly one place (``api/errors.py``); the worker stores
``code`` and ``message`` on failed jobs. Messages never contain tracebacks.

The base is ``ServiceError``, not ``SfumatoError``: that name belongs to the client SDK
(``sfumato.SfumatoError``, what a client catches), and the server's hierarchy is another thing.
"""

from __future__ import annotations

from typing import TypedDict


class ErrorDict(TypedDict):
    """The ``error`` object of the HTTP contract and of failed jobs."""

    code: str
    message: str
    param: str | None


class ServiceError(Exception):
    """Base class. ``code`` is stable; ``message`` teaches the caller what to change."""

    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> ErrorDict:
        """The ``error`` object of the HTTP contract: ``{"code", "message", "param"}``."""
        return {"code": self.code, "message": self.message, "param": self.param}


class InvalidRequest(ServiceError):
    """The request breaks a rule or a limit; nothing was enqueued."""

    code = "invalid_request"


class UnknownChoice(InvalidRequest):
    """A name (model, scheduler) that is not served; the message lists the valid ones."""

    code = "unknown_choice"


class JobNotFound(ServiceError):
    """No such job (or not visible to the caller)."""

    code = "not_found"


class JobConflict(ServiceError):
    """The job's state does not allow the operation (e.g. cancelling a finished job)."""

    code = "conflict"


class QueueUnavailable(ServiceError):
    """Redis cannot be reached; clients should retry after a short wait."""

    code = "queue_unavailable"
    retry_after_s = 2


class StorageUnavailable(ServiceError):
    """The object store refused or could not be reached."""

    code = "storage_unavailable"


class InvalidSignature(ServiceError):
    """A signed URL was tampered with or has expired."""

    code = "invalid_signature"


class GenerationFailed(ServiceError):
    """The model raised while generating; stored on the failed job."""

    code = "generation_failed"


#: What a client reads when the model raised an exception of its own: the exception (class,
#: text, traceback) goes to the worker's log with the job id. Internal names mean nothing to a
#: client and may say more than they should (paths, addresses, library internals).
MODEL_FAILED_MESSAGE = (
    "the model could not generate this job's images; if it happens again with the same request, "
    "report the job id (the worker's log has the details)"
)


class ModelUnavailable(ServiceError):
    """The configured model cannot be loaded or the requested backend is missing."""

    code = "model_unavailable"


class RegistryInvalid(ModelUnavailable):
    """The model registry file (SFUMATO_MODELS_FILE) is unreadable or invalid; the message
    names the model and the field. Stops the API and workers at start-up."""

    code = "model_registry_invalid"


class NoWorker(ModelUnavailable):
    """No live worker serves the requested model (HTTP 503 + ``Retry-After``); nothing was
    queued. Operators who scale from zero set SFUMATO_QUEUE_WITHOUT_WORKERS=true instead."""

    code = "no_worker"
    #: A worker takes a while to start (model load, warm-up): no point retrying every 2 s.
    retry_after_s = 10


class OutOfMemory(GenerationFailed):
    """The device ran out of memory; the runner retries in smaller batches before failing a job."""

    code = "out_of_memory"


# --- security -------------------------------------------------------------------------------


class Unauthorized(ServiceError):
    """No API key, or one that is malformed, unknown or revoked (HTTP 401)."""

    code = "unauthorized"

    def __init__(self, message: str, *, param: str | None = None, token_presented: bool = False) -> None:
        super().__init__(message, param=param)
        #: RFC 6750: a presented-but-bad token is ``error="invalid_token"``; none at all is not.
        self.token_presented = token_presented


class Forbidden(ServiceError):
    """The key is valid but lacks the scope the operation needs (HTTP 403)."""

    code = "forbidden"


class RateLimited(ServiceError):
    """A per-key rate limit or quota is exhausted (HTTP 429 + ``Retry-After``).

    ``param`` names the limit (``requests_per_second``, ``images_per_minute``,
    ``concurrent_jobs``); ``retry_after_s`` is when the caller may try again.
    """

    code = "rate_limited"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = max(1, int(retry_after_s))


class QueueFull(RateLimited):
    """The model's queue is at its global depth cap (HTTP 429): the service is saturated."""

    code = "queue_full"


class PayloadTooLarge(ServiceError):
    """The request body is larger than SFUMATO_MAX_BODY_BYTES (HTTP 413); it was not parsed."""

    code = "payload_too_large"


class ServerBusy(ServiceError):
    """The API process is already reading as many request body bytes as it may hold
    (SFUMATO_MAX_BODY_BYTES_IN_FLIGHT) and this body waited too long for room (HTTP 503)."""

    code = "server_busy"
    retry_after_s = 5


class UnsafeUrl(ServiceError):
    """A URL the server was asked to fetch is refused (scheme, address, redirect, size, time)."""

    code = "unsafe_url"


class WaitTimeout(ServiceError):
    """A synchronous call (``POST /v1/images/generations``) ran out of time waiting for its job
    (HTTP 504); the job was canceled so it does not run for nobody."""

    code = "timeout"


class KeyNotFound(JobNotFound):
    """No API key with that id (HTTP 404, code ``not_found``)."""
