"""Run the API under uvicorn: one process, or ``SFUMATO_API_WORKERS`` processes whose metrics
are merged.

With several processes each one keeps its own counters, so a scrape that reached one process
would see a fraction of the traffic. prometheus_client's multiprocess mode fixes that: every
process writes its samples to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` and whichever
process answers ``/metrics`` merges them all (``core.metrics.render``). :func:`serve` sets the
variable (a fresh directory unless the operator chose one, emptied of stale files) before
uvicorn spawns its workers, which import prometheus_client afresh and so see it.

Another launcher (``gunicorn -k uvicorn.workers.UvicornWorker``, ``uvicorn --workers``) works
the same way with ``api.serving:app_factory`` as a factory, provided ``PROMETHEUS_MULTIPROC_DIR``
points at an empty directory before it starts.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from prometheus_client import multiprocess

from api.app import create_app
from core.config import Settings, get_settings
from core.logs import configure_logging
from core.metrics import MULTIPROC_ENV, multiprocess_dir


def prepare_multiprocess_dir() -> Path:
    """The directory the worker processes will share, set in the environment and empty.

    Files left by a previous run would add its counts to ours, so they are removed (only
    prometheus_client's ``*.db`` files). A directory made here is removed at exit."""
    chosen = multiprocess_dir()
    if chosen is None:
        path = Path(tempfile.mkdtemp(prefix="sfumato-api-metrics-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        os.environ[MULTIPROC_ENV] = str(path)
    else:
        path = Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    return path


def app_factory() -> FastAPI:
    """The app of one uvicorn worker process (``--factory``): settings and logging of its own."""
    settings = get_settings()
    configure_logging(settings, "api")
    if multiprocess_dir():
        pid = os.getpid()
        atexit.register(multiprocess.mark_process_dead, pid)  # its live gauges stop counting
    return create_app(settings)


def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; logs go through ``core.logs`` (no uvicorn formats)."""
    options = {
        "host": settings.api_host,
        "port": settings.api_port,
        "log_config": None,  # keep core.logs' handler; uvicorn's loggers propagate to it
        "access_log": False,  # api/metrics.py logs each request, with its request id
        "server_header": False,  # responses say nothing about the software behind them
    }
    if settings.api_workers > 1:
        prepare_multiprocess_dir()
        uvicorn.run("api.serving:app_factory", factory=True, workers=settings.api_workers, **options)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
