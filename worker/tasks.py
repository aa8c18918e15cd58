"""The function path recorded on queued jobs (``core.jobs.GENERATE_FUNC``).

Sfumato jobs are executed by ``sfumato-worker``, which keeps the model resident and runs
jobs itself (see ``worker/runner.py``); it never calls this function. A plain ``rq worker``
pointed at a Sfumato queue would, and must fail loudly rather than load a model per job.
"""

from __future__ import annotations

from typing import Any


def generate(payload: dict[str, Any]) -> None:
    raise RuntimeError("Sfumato jobs must be run by `sfumato-worker` (python -m worker), not a plain rq worker")
