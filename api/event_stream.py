"""``GET /v1/images/{id}/events``: a job's life as Server-Sent Events, without polling the worker.

Events, in order (each ``event: <name>`` with a JSON ``data`` line and an increasing ``id``):

* ``queued`` (with ``queue_position``), then ``position`` whenever the position changes;
* ``running``, then ``progress`` (``step``, ``total``, ``eta_s``, ``elapsed_s``, ``preview``);
* the final state, ``succeeded`` / ``failed`` / ``canceled``, whose data is the whole job
  (image URLs included), after which the server ends the stream.

How it waits: one ``XREAD BLOCK`` on two Redis streams at once, the job's progress stream
(``core/progress.py``) and RQ's per-job results stream, so it wakes the moment a worker
publishes a step or the job ends. The job's state and queue position are re-read at least
every ``SFUMATO_EVENTS_POLL_S`` (a cancel writes no result). A stream lasts at most
``SFUMATO_EVENTS_MAX_S``; a client that disconnects is noticed within one poll interval, and
everything the stream held (its Redis read, the open-streams gauge) is released in ``finally``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Gauge
from starlette.concurrency import run_in_threadpool

from api.waiting import FINAL_STATES
from core.config import Settings
from core.errors import JobNotFound
from core.jobs import JobRecord, JobStore, redis_errors, results_key
from core.progress import decode, progress_key, queue_position
from core.schemas import JobView

STREAMS_OPEN = Gauge(
    "sfumato_event_streams_open", "Server-Sent Event streams being served now.", multiprocess_mode="livesum"
)
KEEPALIVE_S = 15.0

Render = Callable[[JobRecord], JobView]


def sse(event: str, data: Any, event_id: int) -> str:
    """One Server-Sent Event (``data`` as one JSON line)."""
    return f"event: {event}\nid: {event_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class JobEvents:
    """Serves event streams; owns the async Redis client they block on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s + settings.events_poll_s,
        )

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def stream(
        self, jobs: JobStore, record: JobRecord, render: Render, disconnected: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[str]:
        """The events of ``record``'s job until it ends, the client leaves or time runs out."""
        STREAMS_OPEN.inc()
        try:
            async for chunk in _JobStream(self, jobs, record, render, disconnected).run():
                yield chunk
        finally:
            STREAMS_OPEN.dec()


class _JobStream:
    """The state of one event stream (what has been sent, where each Redis stream was read up to)."""

    def __init__(
        self,
        owner: JobEvents,
        jobs: JobStore,
        record: JobRecord,
        render: Render,
        disconnected: Callable[[], Awaitable[bool]],
    ) -> None:
        self.owner, self.jobs, self.record, self.render, self.disconnected = owner, jobs, record, render, disconnected
        settings = owner.settings
        job_id = record.payload.job_id
        self.progress_key, self.results_key = progress_key(settings, job_id), results_key(job_id)
        self.progress_last, self.results_last = "0-0", "0-0"
        self.status: str | None = None
        self.position: int | None = None
        self.event_id = 0
        self.last_sent = time.monotonic()

    def _event(self, name: str, data: Any) -> str:
        self.event_id += 1
        self.last_sent = time.monotonic()
        return sse(name, data, self.event_id)

    async def run(self) -> AsyncIterator[str]:
        settings = self.owner.settings
        deadline = time.monotonic() + settings.events_max_s
        await self._skip_old_progress()
        while True:
            if await self.disconnected():
                return
            for chunk in await self._state_events():
                yield chunk
            if self.status in FINAL_STATES:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # the client reconnects if it still cares
            for chunk in await self._wait(min(remaining, settings.events_poll_s)):
                yield chunk
            if time.monotonic() - self.last_sent > KEEPALIVE_S:
                self.last_sent = time.monotonic()
                yield ": keepalive\n\n"
            try:
                self.record = await run_in_threadpool(
                    self.jobs.get, self.record.payload.job_id, self.record.payload.tenant
                )
            except JobNotFound:  # expired while watched
                return

    async def _skip_old_progress(self) -> None:
        """Start from the latest progress entry (a late client sees where the job is, not its past)."""
        with redis_errors():
            latest: Any = await self.owner._redis.xrevrange(self.progress_key, count=1)
        if latest:
            entry_id = latest[0][0]
            self.progress_last = _before(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))

    async def _state_events(self) -> list[str]:
        record, out = self.record, []
        if record.status != self.status:
            if record.status in FINAL_STATES:
                if self.status == "queued" and record.started_at is not None:
                    out.append(self._event("running", {"id": record.payload.job_id, "status": "running"}))
                out += await self._drain_progress()
                view = await run_in_threadpool(self.render, record)
                out.append(self._event(record.status, view.model_dump(mode="json")))
                self.status = record.status
                return out
            self.status = record.status
            data: dict[str, Any] = {"id": record.payload.job_id, "status": record.status}
            if record.status == "queued":
                self.position = await self._position()
                data["queue_position"] = self.position
            out.append(self._event(record.status, data))
        elif record.status == "queued":
            position = await self._position()
            # None while the record still says queued: a worker has taken the job off the queue
            # and not yet marked it running (the ``running`` event follows), or it is past the
            # scan limit. Neither is a new position, and clients sort on what they get.
            if position is not None and position != self.position:
                self.position = position
                out.append(self._event("position", {"id": record.payload.job_id, "queue_position": position}))
        return out

    async def _position(self) -> int | None:
        payload = self.record.payload
        with redis_errors():
            return await run_in_threadpool(
                queue_position, self.jobs.connection, self.owner.settings, payload.model, payload.job_id
            )

    async def _wait(self, seconds: float) -> list[str]:
        """Block until progress, the job's result or ``seconds``; the progress events that came."""
        with redis_errors():
            entries: Any = await self.owner._redis.xread(
                {self.progress_key: self.progress_last, self.results_key: self.results_last},
                block=max(1, int(seconds * 1000)),
            )
        out: list[str] = []
        for stream, messages in entries or ():
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            if name == self.results_key:
                if messages:
                    self.results_last = messages[-1][0]
                continue
            out += self._progress_events(messages)
        return out

    async def _drain_progress(self) -> list[str]:
        """Progress entries not yet sent (read without blocking), before the final event."""
        with redis_errors():
            entries: Any = await self.owner._redis.xread({self.progress_key: self.progress_last})
        out: list[str] = []
        for _stream, messages in entries or ():
            out += self._progress_events(messages)
        return out

    def _progress_events(self, messages: list[Any]) -> list[str]:
        out = []
        for entry_id, fields in messages:
            self.progress_last = entry_id
            view = decode(fields)
            if view is None:
                continue
            if self.status in (None, "queued"):  # progress means it runs, even if we saw it queued
                self.status = "running"
                out.append(self._event("running", {"id": self.record.payload.job_id, "status": "running"}))
            out.append(self._event("progress", view.model_dump(mode="json", exclude_none=True)))
        return out


def _before(entry_id: str) -> str:
    """The stream id just before ``entry_id``, so XREAD returns ``entry_id`` itself."""
    ms, _, seq = entry_id.partition("-")
    if int(seq or 0) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-18446744073709551615" if int(ms) > 0 else "0-0"
