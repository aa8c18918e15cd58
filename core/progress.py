"""Live progress of a job: where workers write it and how the API reads it back.

A worker appends each progress update of a job to a small Redis stream,
``{prefix}:progress:{job_id}`` (capped at :data:`STREAM_MAXLEN` entries, expiring with the
job). A stream rather than pub/sub: a reader that connects late still finds the latest update
(``GET /v1/images/{id}`` reads one entry), and an event stream can ``XREAD BLOCK`` on it and on
RQ's per-job results stream in one call, waking on either progress or the job's end.

Queue position is read on demand (``LPOS`` on the job's RQ queue list, plus the lengths of
the model's higher-priority queues): nothing has to be published when other jobs move.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from rq import Queue

from core.config import Settings
from core.models import queue_name
from core.priority import DEFAULT_PRIORITY, PriorityClass, at_or_above
from core.schemas import ProgressView

#: Entries kept per job: a reader needs the latest, an event stream a few behind it.
STREAM_MAXLEN = 64
#: The one field of a stream entry: the JSON of a :class:`~core.schemas.ProgressView`.
FIELD = "data"
#: LPOS scans at most this many queue entries (the queue cap bounds it too).
POSITION_SCAN = 100_000


def progress_key(settings: Settings, job_id: str) -> str:
    return f"{settings.queue_prefix}:progress:{job_id}"


def encode(view: ProgressView) -> dict[str, str]:
    """A stream entry for ``view``."""
    return {FIELD: view.model_dump_json(exclude_none=True)}


def decode(fields: dict[Any, Any]) -> ProgressView | None:
    """The view in a stream entry; None for an entry that is not ours (never raises)."""
    raw = fields.get(FIELD.encode()) or fields.get(FIELD)
    if raw is None:
        return None
    try:
        return ProgressView.model_validate(json.loads(raw))
    except (ValueError, TypeError):
        return None


def latest_progress(connection: redis.Redis, settings: Settings, job_id: str) -> ProgressView | None:
    """The most recent update a worker published for ``job_id``, if any."""
    entries: Any = connection.xrevrange(progress_key(settings, job_id), count=1)
    for _entry_id, fields in entries or ():
        return decode(fields)
    return None


def queue_position(
    connection: redis.Redis,
    settings: Settings,
    model_id: str,
    job_id: str,
    priority: PriorityClass = DEFAULT_PRIORITY,
) -> int | None:
    """Jobs of the model that workers take before ``job_id`` (0: next); None when it is not queued.

    Those ahead of it in its own class's queue plus every job queued in a higher class. Approximate
    by design: a worker may claim a later job with the same batch key as a batch partner ahead of
    its turn, a lower class's guaranteed share (SFUMATO_PRIORITY_SHARE) may take a turn first,
    and higher-class jobs submitted later will still overtake it.
    """
    keys = [Queue(queue_name(settings, model_id, p), connection=connection).key for p in at_or_above(priority)]
    with connection.pipeline(transaction=False) as pipe:
        pipe.lpos(keys[-1], job_id, maxlen=POSITION_SCAN)
        for key in keys[:-1]:
            pipe.llen(key)
        position, *higher = pipe.execute()
    return None if position is None else int(position) + sum(int(n) for n in higher)
