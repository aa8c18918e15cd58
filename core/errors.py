"""The one error hierarchy of Sfumato.

Every error a client can see is a :class:`SfumatoError` with a stable ``code`` (part of the
API contract), a human ``message`` and, where one field is to blame, the ``param``. The API maps
each class to an HTTP status in exactly one place (``api/errors.py``); the worker stores
``code`` and ``message`` on failed jobs. Messages never contain tracebacks.
"""

from __future__ import annotations

from typing import TypedDict


class ErrorDict(TypedDict):
    """The ``error`` object of the HTTP contract and of failed jobs."""

    code: str
    message: str
    param: str | None


class SfumatoError(Exception):
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


class InvalidRequest(SfumatoError):
    """The request breaks a rule or a limit; nothing was enqueued."""

    code = "invalid_request"


class UnknownChoice(InvalidRequest):
    """A name (model, scheduler) that is not served; the message lists the valid ones."""

    code = "unknown_choice"


class JobNotFound(SfumatoError):
    """No such job (or not visible to the caller)."""

    code = "not_found"


class JobConflict(SfumatoError):
    """The job's state does not allow the operation (e.g. cancelling a finished job)."""

    code = "conflict"


class QueueUnavailable(SfumatoError):
    """Redis cannot be reached; clients should retry after a short wait."""

    code = "queue_unavailable"
    retry_after_s = 2


class StorageUnavailable(SfumatoError):
    """The object store refused or could not be reached."""

    code = "storage_unavailable"


class InvalidSignature(SfumatoError):
    """A signed URL was tampered with or has expired."""

    code = "invalid_signature"


class GenerationFailed(SfumatoError):
    """The model raised while generating; stored on the failed job."""

    code = "generation_failed"


class ModelUnavailable(SfumatoError):
    """The configured model cannot be loaded or the requested backend is missing."""

    code = "model_unavailable"


class OutOfMemory(GenerationFailed):
    """The device ran out of memory; the runner retries in smaller batches before failing a job."""

    code = "out_of_memory"
