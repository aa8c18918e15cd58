"""A Redis outage is not a worker death: it must not use up a job's retry attempts.

``SFUMATO_JOB_ATTEMPTS`` are for workers that die under a job (kill -9, OOM-kill, node loss).
While Redis is down no worker can renew its execution leases, so when Redis comes back every
running job's lease looks expired, and a job that finished during the outage cannot be
completed yet. Neither may count as an attempt: here two workers run jobs through an outage
longer than ``SFUMATO_EXECUTION_TTL_S`` (4 s in the fast liveness settings) and every job must
succeed once with all its retries left.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.chaos import harness
from tests.support.processes import wait_until

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

ATTEMPTS = 3
#: Longer than the execution lease (4 s), shorter than a worker's registration (64 s): no
#: worker is lost, only Redis is gone.
OUTAGE_S = 10.0


def _progress(http: httpx.Client, job_id: str) -> int:
    job = http.get(f"/v1/images/{job_id}").json()
    return int((job.get("progress") or {}).get("step") or 0) if job.get("status") == "running" else 0


def test_a_redis_outage_consumes_no_retry_attempt(tmp_path: Path) -> None:
    workdir = harness.new_workdir(tmp_path, "redis-outage")
    cluster = harness.cluster(
        workdir, workers=2, SFUMATO_JOB_ATTEMPTS=str(ATTEMPTS), SFUMATO_MAX_STEPS="1000", SFUMATO_LOG_LEVEL="INFO"
    )
    with cluster as c, httpx.Client(base_url=c.base_url, timeout=10) as http:
        # A long job that runs through the whole outage (its lease expires while Redis is down)
        # and a shorter one that may finish during it (its completion must wait for Redis).
        bodies = [
            {"prompt": "through the outage", "seed": 1, "steps": 600, "width": 128, "height": 128},
            {"prompt": "ends in the outage", "seed": 2, "steps": 60, "width": 64, "height": 64},
        ]
        ids = []
        for body in bodies:
            resp = http.post("/v1/images", json=body)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
        wait_until(lambda: all(_progress(http, j) > 0 for j in ids), 180, "both jobs running", *c.workers)

        c.redis.stop()
        time.sleep(OUTAGE_S)  # the outage itself is a duration, by design
        c.redis = c.redis.restart()

        deadline = time.monotonic() + 600
        states: dict[str, dict] = {}
        while time.monotonic() < deadline:
            try:
                states = {j: http.get(f"/v1/images/{j}").json() for j in ids}
            except httpx.HTTPError:
                states = {}
            if states and all(s.get("status") in harness.FINAL for s in states.values()):
                break
            time.sleep(0.5)
        logs = "\n".join(f"--- {w.name}\n{w.log_tail(60)}" for w in c.workers)
        assert all(s.get("status") == "succeeded" for s in states.values()), (states, logs)
        assert all(w.alive() for w in c.workers), logs  # no worker was lost

        connection = redis.Redis.from_url(c.redis.url)
        for job_id in ids:
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            # Each job ran to completion once: no retry consumed, one result recorded.
            assert job.retries_left == ATTEMPTS - 1, (job_id, job.retries_left, logs)
            assert len(job.results()) == 1, (job_id, job.results(), logs)
        full_logs = "".join(w.log_path.read_text(errors="replace") for w in c.workers)
        assert "for retry" not in full_logs, logs
