"""Structured logs: one JSON object per line (``SFUMATO_LOG_FORMAT=json``, the default) or a
line for people (``text``, what ``make run`` uses), with the request and job ids attached.

The API takes each request's id from ``X-Request-ID`` (or makes one), keeps it in a context
variable for the request's duration, stores it in the job's meta when it enqueues, and the
worker logs it with the job's events: one id follows a request from the HTTP edge into the
worker. Call :func:`configure_logging` once per process, at its entry point.

Fields of a JSON line: ``ts`` (UTC, ISO 8601, ms), ``level``, ``logger``, ``component``
(``api``/``worker``), ``msg``, ``request_id`` / ``job_id`` when known, any ``extra=`` fields of
the call, and ``exc`` (the traceback) for exceptions. Logs go to stderr.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from core.config import Settings

REQUEST_ID: ContextVar[str | None] = ContextVar("sfumato_request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("sfumato_job_id", default=None)

#: What a client may send as X-Request-ID; anything else is replaced by a fresh id.
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
#: Attributes every LogRecord has: whatever else a record carries came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of msg with terminal colours
}
_HANDLER_MARK = "_sfumato_handler"


def new_request_id() -> str:
    return secrets.token_hex(8)


def accept_request_id(header: str | None) -> str:
    """The client's X-Request-ID when it is short and plain, else a new id."""
    if header and _REQUEST_ID_OK.fullmatch(header):
        return header
    return new_request_id()


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def request_meta(key: str) -> dict[str, str]:
    """``{key: request id}`` inside a request, ``{}`` outside one (a job enqueued by a script)."""
    request_id = REQUEST_ID.get()
    return {key: request_id} if request_id is not None else {}


@contextmanager
def log_context(*, request_id: str | None = None, job_id: str | None = None) -> Iterator[None]:
    """Attach ``request_id`` / ``job_id`` to every line logged inside the block."""
    tokens = (REQUEST_ID.set(request_id), JOB_ID.set(job_id))
    try:
        yield
    finally:
        JOB_ID.reset(tokens[1])
        REQUEST_ID.reset(tokens[0])


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Context ids and ``extra=`` fields of ``record``, in a stable order."""
    fields: dict[str, Any] = {}
    request_id, job_id = REQUEST_ID.get(), JOB_ID.get()
    if request_id is not None:
        fields["request_id"] = request_id
    if job_id is not None:
        fields["job_id"] = job_id
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRS and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "component": self.component,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``12:00:01.234 INFO  sfumato.worker: message  job_id=... request_id=...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            first, newline, rest = line.partition("\n")  # keep a traceback below the fields
            line = first + "  " + " ".join(f"{k}={v}" for k, v in fields.items()) + newline + rest
        return line


def configure_logging(settings: Settings, component: str) -> None:
    """Send every logger (ours, uvicorn's, RQ's) to stderr in the configured format.

    Idempotent: calling it again replaces the handler it installed before.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component) if settings.log_format == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # uvicorn and RQ install their own plain handlers unless ours is already there.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "rq.worker"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # transformers and diffusers print "[lib] message" through a handler of their own; when
    # loaded (the worker), send their records through ours instead. The API never loads them.
    for library in ("transformers", "diffusers"):
        if f"{library}.utils.logging" in sys.modules:
            library_logging = importlib.import_module(f"{library}.utils.logging")
            library_logging.disable_default_handler()
            library_logging.enable_propagation()
    logging.captureWarnings(True)  # warnings.warn(...) become log lines too
