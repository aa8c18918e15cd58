"""Structured logs: one JSON object per line, with the request and job ids of the context."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from core.config import Settings
from core.logs import JsonFormatter, TextFormatter, accept_request_id, configure_logging, log_context


def _record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("sfumato.test")
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, exc_info, extra=extra)
    return record


def test_json_line_has_the_fields_and_the_context_ids() -> None:
    with log_context(request_id="req-1", job_id="job-9"):
        line = JsonFormatter("worker").format(_record("took %d ms", 12, event="x", images=3))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "took 12 ms" and entry["level"] == "info" and entry["logger"] == "sfumato.test"
    assert entry["component"] == "worker" and entry["ts"].endswith("Z")
    assert (entry["request_id"], entry["job_id"], entry["event"], entry["images"]) == ("req-1", "job-9", "x", 3)


def test_json_line_stays_one_line_with_a_traceback_and_no_ids_outside_a_context() -> None:
    line = JsonFormatter("api").format(_record("failed\nbadly", exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "failed\nbadly" and "ValueError: boom" in entry["exc"]
    assert "request_id" not in entry and "job_id" not in entry


def test_text_line_is_for_people() -> None:
    with log_context(request_id="req-2"):
        line = TextFormatter().format(_record("hello %s", "there", event="greeting"))
    assert "INFO" in line and "sfumato.test: hello there" in line
    assert "request_id=req-2" in line and "event=greeting" in line


@pytest.mark.parametrize("header", ["abc-123", "0f0f0f0f0f0f0f0f", "trace.id:1_2"])
def test_a_plain_request_id_is_kept(header: str) -> None:
    assert accept_request_id(header) == header


@pytest.mark.parametrize("header", [None, "", "x" * 65, "has space", "line\nbreak", '{"json": 1}'])
def test_anything_else_gets_a_fresh_request_id(header: str | None) -> None:
    fresh = accept_request_id(header)
    assert fresh != header and len(fresh) == 16 and int(fresh, 16) >= 0


@pytest.fixture
def restored_root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_configure_logging_installs_one_handler_in_the_chosen_format(restored_root: logging.Logger) -> None:
    configure_logging(Settings(log_format="text", log_level="DEBUG"), "api")
    configure_logging(Settings(log_format="json", log_level="WARNING"), "api")
    ours = [h for h in restored_root.handlers if getattr(h, "_sfumato_handler", False)]
    assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
    assert restored_root.level == logging.WARNING
    stream = io.StringIO()
    ours[0].setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("uvicorn.error").warning("from uvicorn")
    assert json.loads(stream.getvalue())["msg"] == "from uvicorn"
