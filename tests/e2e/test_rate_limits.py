"""Rate limits and quotas hold across TWO API processes sharing one Redis, under concurrency.

Requests race from 16 threads, alternating between the two uvicorn processes. For each kind of
limit the number accepted equals the allowance (a token bucket may refill by one during the
burst, hence +1), everything else is a 429 naming the limit with Retry-After, nothing refused
is enqueued, and other keys are unaffected.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from core.apikeys import KeyLimits
from devstack.net import free_port
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api
from tests.support.race import race

pytestmark = pytest.mark.timeout(300)
THREADS = 16


@dataclass
class Replicas:
    env: dict[str, str]
    urls: list[str]
    processes: list[ServiceProcess]

    def race(self, method: str, path: str, token: str, count: int, body: dict | None = None) -> list[httpx.Response]:
        return race(self.urls, method, path, bearer(token), count, body, threads=THREADS)

    def queued(self) -> int:
        prefix = self.env["SFUMATO_QUEUE_PREFIX"]
        return int(redis.Redis.from_url(self.env["SFUMATO_REDIS_URL"]).llen(f"rq:queue:{prefix}:tiny"))


@pytest.fixture(scope="module")
def replicas(redis_server, tmp_path_factory) -> Iterator[Replicas]:
    tmp: Path = tmp_path_factory.mktemp("ratelimits")
    env = {
        "SFUMATO_REDIS_URL": redis_server.url,
        "SFUMATO_DATA_DIR": str(tmp / "data"),
        "SFUMATO_QUEUE_PREFIX": f"rl-{secrets.token_hex(4)}",
        "SFUMATO_URL_SIGNING_KEY": "k",
        # Deployment defaults off: each test key carries its own limit (per-key overrides).
        "SFUMATO_RATE_LIMIT_RPS": "0",
        "SFUMATO_IMAGES_PER_MINUTE": "0",
        "SFUMATO_MAX_CONCURRENT_JOBS": "0",
        "SFUMATO_MAX_QUEUE_DEPTH": "0",
    }
    ports = [free_port(), free_port()]
    processes = [start_api(env, port, tmp / "logs", name=f"api-{i}") for i, port in enumerate(ports)]
    try:
        yield Replicas(env, [f"http://127.0.0.1:{p}" for p in ports], processes)
    finally:
        for process in processes:
            process.stop()


def _check_refusals(responses: list[httpx.Response], param: str) -> int:
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 202, 429}, codes
    for resp in responses:
        if resp.status_code == 429:
            assert resp.json()["error"]["code"] == "rate_limited"
            assert resp.json()["error"]["param"] == param
            assert int(resp.headers["retry-after"]) >= 1
    return codes[200] + codes[202]


def test_images_per_minute_across_two_replicas(replicas: Replicas) -> None:
    token = env_key(replicas.env, limits=KeyLimits(images_per_minute=12))
    before = replicas.queued()
    accepted = _check_refusals(
        replicas.race("POST", "/v1/images", token, 48, {"prompt": "x", "steps": 2}), "images_per_minute"
    )
    assert 12 <= accepted <= 13  # refill: 0.2 images/s during the burst
    assert replicas.queued() - before == accepted


def test_concurrent_jobs_across_two_replicas(replicas: Replicas) -> None:
    token = env_key(replicas.env, limits=KeyLimits(max_concurrent_jobs=5))
    before = replicas.queued()
    accepted = _check_refusals(
        replicas.race("POST", "/v1/images", token, 40, {"prompt": "x", "steps": 2}), "concurrent_jobs"
    )
    assert accepted == 5  # no worker runs: no slot comes back during the test
    assert replicas.queued() - before == 5


def test_requests_per_second_across_two_replicas(replicas: Replicas) -> None:
    token = env_key(replicas.env, limits=KeyLimits(rate_limit_rps=0.05, rate_limit_burst=10))
    accepted = _check_refusals(replicas.race("GET", "/v1/models", token, 48), "requests_per_second")
    assert 10 <= accepted <= 11


def test_other_keys_are_unaffected_by_an_exhausted_one(replicas: Replicas) -> None:
    limits = KeyLimits(rate_limit_rps=0.05, rate_limit_burst=3, images_per_minute=2, max_concurrent_jobs=1)
    greedy, other = env_key(replicas.env, limits=limits), env_key(replicas.env, limits=limits)
    replicas.race("POST", "/v1/images", greedy, 16, {"prompt": "x", "steps": 2})
    assert all(r.status_code == 429 for r in replicas.race("GET", "/v1/models", greedy, 4))
    for url in replicas.urls[:1]:
        resp = httpx.post(f"{url}/v1/images", json={"prompt": "x", "steps": 2}, headers=bearer(other), timeout=10)
        assert resp.status_code == 202, resp.text
