"""``sfumato-worker`` / ``python -m worker``: load the model once, then serve its queue.

The model is loaded once per process. If Redis goes away, RQ's loop gives up; we keep the
resident model, wait with exponential backoff, and start a fresh RQ worker on the same engine,
so a Redis outage costs no model reload and never becomes a crash loop.
"""

from __future__ import annotations

from core.script_extras import require_extra

require_extra("sfumato-worker", "worker", ("torch", "diffusers", "transformers"))  # before the imports that need it

import logging
import os
import signal
import socket
import time

from rq.exceptions import StopRequested

from core.config import Settings, get_settings
from core.jobs import connect
from core.logs import configure_logging
from core.priority import queue_names
from core.storage import ObjectStore, build_store
from worker.pipelines.engine import Engine
from worker.runtime import metrics as worker_metrics
from worker.runtime.liveness import Liveness
from worker.runtime.runner import PresenceHeartbeat, SfumatoWorker

log = logging.getLogger("sfumato.worker")

MAX_BACKOFF_S = 30.0


def build_worker(settings: Settings, engine: Engine, store: ObjectStore, attempt: int = 0) -> SfumatoWorker:
    """An RQ worker around the resident ``engine`` with short TTLs (see worker/runtime/liveness.py),
    reading its model's queue of every priority class (worker/runtime/priority.py)."""
    connection = connect(settings, blocking=True)
    queues = list(queue_names(settings, engine.spec.id).values())  # one per priority class, highest first
    name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    return SfumatoWorker(
        queues,
        engine=engine,
        store=store,
        settings=settings,
        connection=connection,
        name=f"{name}-{attempt}" if attempt else name,
        worker_ttl=settings.worker_ttl_s,
        maintenance_interval=settings.worker_ttl_s,
    )


def serve(worker: SfumatoWorker) -> None:
    """Run one RQ worker until it stops; presence and liveness threads live as long as it does."""
    presence, liveness = PresenceHeartbeat(worker), Liveness(worker)
    try:
        presence.start()
        liveness.start()
        log.info("worker %s serving model %s on %s", worker.name, worker.engine.spec.id, worker.queue_names())
        worker.work(logging_level=worker.settings.log_level)
    finally:
        liveness.stop()
        presence.stop()


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "worker")
    observability = worker_metrics.install(settings)  # /metrics and /healthz (not ready yet) from here on
    with observability.phase("load"):
        engine = Engine.load(settings)
    with observability.phase("warmup"):
        engine.warmup()
    store = observability.store(build_store(settings))
    backoff, attempt = 1.0, 0
    while True:
        started = time.monotonic()
        worker = None
        try:
            worker = build_worker(settings, engine, store, attempt)
            observability.attach(worker)
            serve(worker)
        except Exception as exc:  # Redis unreachable at start-up or mid-run
            log.warning("worker loop stopped: %s", exc)
        if worker is not None and worker.draining:
            # Drained: later signals must not turn a clean exit into a signal death.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            log.info("drained; exiting")
            return
        if time.monotonic() - started > 60:
            backoff = 1.0  # it ran fine for a while: this is a new outage
        log.warning("reconnecting to Redis in %.0f s", backoff)
        try:
            time.sleep(backoff)
        except (KeyboardInterrupt, StopRequested):  # a stop signal while waiting for Redis
            return
        backoff, attempt = min(backoff * 2, MAX_BACKOFF_S), attempt + 1


if __name__ == "__main__":
    main()
