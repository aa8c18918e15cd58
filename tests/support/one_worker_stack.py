"""A real API and one worker on a shared Redis, for e2e tests that send requests to a model.

Several e2e modules (LoRA, ControlNet, prompts) need the same thing: start both processes with
an environment, wait until the worker serves, give the test an authenticated HTTP client, a
Redis connection and the model's queue key, and stop everything afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from devstack.net import free_port
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_for_workers


@dataclass
class RunningStack:
    """What a test gets: the client (with the default tenant's key), the worker process (for its
    log), Redis, and the Redis list of the model's queue."""

    client: httpx.Client
    worker: ServiceProcess
    redis: redis.Redis
    queue_key: str


@contextmanager
def one_worker_stack(
    env: dict[str, str], redis_url: str, log_dir: Path, model: str = "tiny", timeout_s: float = 150
) -> Iterator[RunningStack]:
    """Start the worker and the API with ``env``, wait until one worker serves, yield; stop both."""
    port = free_port()
    worker = start_worker(env, log_dir)
    api = start_api(env, port, log_dir)
    base_url = f"http://127.0.0.1:{port}"
    headers = bearer(env_key(env, tenant="default"))
    conn = redis.Redis.from_url(redis_url)
    try:
        wait_for_workers(base_url, 1, 240, worker, api, headers=headers)
        with httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers) as client:
            yield RunningStack(client, worker, conn, f"rq:queue:{env['SFUMATO_QUEUE_PREFIX']}:{model}")
    finally:
        conn.close()
        worker.stop()
        api.stop()
