"""The one place where errors become HTTP responses.

Every error body is ``{"error": {"code", "message", "param"}}``; never a traceback. Request
validation errors from pydantic are rewritten into the same shape, naming the field, the value
and the limit.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    InvalidRequest,
    InvalidSignature,
    JobConflict,
    JobNotFound,
    ModelUnavailable,
    QueueUnavailable,
    SfumatoError,
    StorageUnavailable,
)

log = logging.getLogger("sfumato.api")

#: Most specific class first; the first match wins.
HTTP_STATUS: tuple[tuple[type[SfumatoError], int], ...] = (
    (InvalidRequest, 422),
    (JobNotFound, 404),
    (JobConflict, 409),
    (InvalidSignature, 403),
    (QueueUnavailable, 503),
    (StorageUnavailable, 503),
    (ModelUnavailable, 503),
)


def status_for(exc: SfumatoError) -> int:
    for cls, status in HTTP_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, code: str, message: str, param: str | None = None, **headers: str) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _describe_validation_error(err: dict[str, Any]) -> tuple[str | None, str]:
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header", "path")]
    param = ".".join(loc) or None
    message = str(err.get("msg", "invalid value"))
    if "input" in err and not isinstance(err["input"], dict | list):
        value = repr(err["input"])
        if len(value) > 80:
            value = value[:77] + "..."
        message = f"{param or 'body'}: {message} (got {value})"
    elif param:
        message = f"{param}: {message}"
    return param, message


async def _sfumato_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SfumatoError)
    status = status_for(exc)
    headers = {"Retry-After": str(QueueUnavailable.retry_after_s)} if status == 503 else {}
    return error_response(status, exc.code, exc.message, exc.param, **headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    param, message = _describe_validation_error(errors[0]) if errors else (None, "invalid request")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return error_response(422, InvalidRequest.code, message, param)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), None, **(exc.headers or {}))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error; the request id is in the server logs")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SfumatoError, _sfumato_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
