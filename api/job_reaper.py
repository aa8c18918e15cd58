"""The API's share of recovering dead workers' jobs (core/reaper.py), for when no worker is left.

Workers sweep every model's queues, but with scale-from-zero a model can have no worker at all,
and a deployment can lose every worker at once: then only the API is there to notice that a
``running`` job's worker is gone. Each replica runs the same sweep from a daemon thread (a Redis
lock per queue keeps it to one sweeper at a time), so the job goes back to ``queued`` with
``waiting_for: "no_worker"``, onto the queue list the autoscaler counts, and a worker is started
for it.

A thread, not an asyncio task: the sweep makes blocking Redis calls.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis

from api.resources import ApiServices
from core.reaper import AbandonedJobReaper

log = logging.getLogger("sfumato.api")


class ReaperThread:
    """Every ``SFUMATO_REAPER_INTERVAL_S``: a sweep; every heartbeat interval: a ping, so that an
    outage shorter than the reaper interval is still seen (and waited out) by the sweep."""

    def __init__(self, services: ApiServices) -> None:
        settings = services.settings
        owner = f"api-{socket.gethostname()}-{os.getpid()}"
        self.reaper = AbandonedJobReaper(services.jobs.connection, settings, owner)
        self.connection = services.jobs.connection
        self.tick_s = min(settings.heartbeat_interval_s, settings.reaper_interval_s)
        self.sweep_every = max(1, round(settings.reaper_interval_s / self.tick_s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sfumato-reaper", daemon=True)

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(self.tick_s):
            ticks += 1
            try:
                self.connection.ping()
                if ticks % self.sweep_every == 0:
                    self.reaper.sweep()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                self.reaper.redis_failed()  # an outage (the API answers 503 meanwhile): wait it out
                log.warning("reaper: Redis unreachable (%s)", type(exc).__name__)
            except Exception:
                log.exception("reaper: sweep failed")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@asynccontextmanager
async def job_reaper(services: ApiServices) -> AsyncIterator[None]:
    """Run the sweep for as long as the app serves."""
    thread = ReaperThread(services)
    thread.start()
    try:
        yield
    finally:
        thread.stop()
