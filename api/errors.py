"""The one place where errors become HTTP responses.

Every error body is ``{"error": {"code", "message", "param"}}``; never a traceback. Request
validation errors from pydantic are rewritten into the same shape, naming the field, the value
and the limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    Forbidden,
    InvalidRequest,
    InvalidSignature,
    JobConflict,
    JobNotFound,
    ModelUnavailable,
    PayloadTooLarge,
    QueueUnavailable,
    RateLimited,
    ServerBusy,
    ServiceError,
    StorageUnavailable,
    Unauthorized,
    UnsafeUrl,
    WaitTimeout,
)
from core.schemas import ErrorResponse

log = logging.getLogger("sfumato.api")

#: Most specific class first; the first match wins.
HTTP_STATUS: tuple[tuple[type[ServiceError], int], ...] = (
    (InvalidRequest, 422),
    (UnsafeUrl, 422),  # a webhook_url the server refuses to call
    (WaitTimeout, 504),
    (Unauthorized, 401),
    (Forbidden, 403),
    (PayloadTooLarge, 413),
    (RateLimited, 429),
    (JobNotFound, 404),
    (JobConflict, 409),
    (InvalidSignature, 403),
    (QueueUnavailable, 503),
    (StorageUnavailable, 503),
    (ModelUnavailable, 503),
    (ServerBusy, 503),
)


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}, "required": True}
}
_DOCUMENTED: dict[int, dict[str, Any]] = {
    401: {
        "description": "No API key, or a malformed, unknown or revoked one (code unauthorized)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    },
    403: {"description": "The key lacks the scope this operation needs (code forbidden)"},
    404: {"description": "No such resource (another tenant's job is indistinguishable from a missing one)"},
    409: {"description": "The job's state does not allow this (e.g. cancelling a finished job)"},
    413: {"description": "The request body is over SFUMATO_MAX_BODY_BYTES; it was not parsed"},
    422: {"description": "Invalid request: the message names the field, the value and the limit"},
    429: {
        "description": "A rate limit, quota or the queue cap; param names it (code rate_limited or queue_full)",
        "headers": _RETRY_AFTER,
    },
    503: {
        "description": "Queue or storage unavailable, no live worker serves the model (code no_worker), or "
        "the API is holding as many large request bodies as it may (code server_busy); retry after Retry-After",
        "headers": _RETRY_AFTER,
    },
    504: {"description": "The images were not ready in time (code timeout); the job was canceled"},
}
#: What any route behind an API key may answer besides its own outcomes.
AUTHENTICATED = (401, 403, 413, 422, 429, 503)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with the ``ErrorResponse`` body."""
    return {status: {"model": ErrorResponse, **_DOCUMENTED[status]} for status in sorted(set(statuses))}


def status_for(exc: ServiceError) -> int:
    for cls, status in HTTP_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, code: str, message: str, param: str | None = None, **headers: str) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers or None)


#: Where FastAPI says a parameter came from: the first element of a request error's loc.
_SOURCES = frozenset({"body", "query", "header", "path", "cookie"})


def param_path(loc: Sequence[int | str]) -> str | None:
    """A pydantic ``loc`` as the one spelling every error's ``param`` uses: list items in
    brackets, fields after dots (``("controlnet", 0, "image")`` -> ``controlnet[0].image``), the
    same as the hand-written params of ``core/validation.py`` and ``core/controlnets.py``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or None


def _describe_validation_error(err: dict[str, Any]) -> tuple[str | None, str]:
    loc = tuple(err.get("loc", ()))
    if loc and loc[0] in _SOURCES:
        loc = loc[1:]
    # A JSON syntax error's loc is the character offset: the body as a whole is to blame.
    param = "body" if err.get("type") == "json_invalid" else param_path(loc)
    message = str(err.get("msg", "invalid value"))
    if "input" in err and not isinstance(err["input"], dict | list):
        value = repr(err["input"])
        if len(value) > 80:
            value = value[:77] + "..."
        message = f"{param or 'body'}: {message} (got {value})"
    elif param:
        message = f"{param}: {message}"
    return param, message


def _headers_for(exc: ServiceError, status: int) -> dict[str, str]:
    """Headers the status calls for: when to retry (429, 503), how to authenticate (401)."""
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after_s)}
    if status == 503:
        return {"Retry-After": str(getattr(exc, "retry_after_s", QueueUnavailable.retry_after_s))}
    if isinstance(exc, Unauthorized):
        challenge = 'Bearer realm="sfumato"'
        if exc.token_presented:  # RFC 6750 section 3.1
            challenge += ', error="invalid_token"'
        return {"WWW-Authenticate": challenge}
    return {}


def response_for(exc: ServiceError) -> JSONResponse:
    """The HTTP response of ``exc``: used by the handler below and by the ASGI middlewares."""
    status = status_for(exc)
    if status >= 500:
        _log_cause(exc, status)
    return error_response(status, exc.code, exc.message, exc.param, **_headers_for(exc, status))


def _log_cause(exc: ServiceError, status: int) -> None:
    """A 5xx tells the client only a stable code and a human message; what caused it (the
    exception class and text, e.g. the Redis connection error) goes to the log, where the
    request id is attached (core/logs.py)."""
    cause = exc.__cause__ or exc.__context__
    detail = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
    log.warning("%d %s: %s", status, exc.code, detail[:500], extra={"event": "service_error", "code": exc.code})


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return response_for(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    param, message = _describe_validation_error(errors[0]) if errors else (None, "invalid request")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return error_response(422, InvalidRequest.code, message, param)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8): the same 422 as
        # any other malformed body, so clients see one status and one code for it.
        return error_response(422, InvalidRequest.code, "the request body is not valid JSON", "body")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), None, **(exc.headers or {}))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error; the request id is in the server logs")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
