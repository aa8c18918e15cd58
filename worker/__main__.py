"""``sfumato-worker`` / ``python -m worker``: load the model once, then serve its queue."""

from __future__ import annotations

import logging
import os
import socket

from rq import Queue
from rq.serializers import JSONSerializer

from core.config import Settings, get_settings
from core.jobs import connect
from core.models import queue_name
from core.storage import build_store
from worker.engine import Engine
from worker.runner import PresenceHeartbeat, SfumatoWorker

log = logging.getLogger("sfumato.worker")


def build_worker(settings: Settings) -> SfumatoWorker:
    """Load and warm the model, connect to Redis and storage, and build the RQ worker."""
    engine = Engine.load(settings)
    engine.warmup()
    connection = connect(settings, blocking=True)
    queue = Queue(queue_name(settings, engine.spec.id), connection=connection, serializer=JSONSerializer)
    name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    return SfumatoWorker(
        [queue], engine=engine, store=build_store(settings), settings=settings, connection=connection, name=name
    )


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = build_worker(settings)
    presence = PresenceHeartbeat(worker)
    presence.start()
    log.info("worker %s serving model %s on %s", worker.name, worker.engine.spec.id, worker.queue_names())
    try:
        worker.work(logging_level=settings.log_level)
    finally:
        presence.stop()


if __name__ == "__main__":
    main()
