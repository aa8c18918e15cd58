"""Routing at submit, on the real API and a real Redis: a request for a registry model that no
live worker serves is refused (503 no_worker) before any quota or Idempotency-Key is spent, or,
with scale-from-zero, queued and shown as waiting for a worker.

Worker presence is the real protocol of core/presence.py (the same calls a worker makes), so
no model has to load here; tests/e2e/test_registry_service.py runs real workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from api.app import create_app
from core.apikeys import KeyLimits
from core.config import Settings
from core.models import queue_name
from core.presence import announce, withdraw
from tests.support.api_server import serve_app
from tests.support.embedding import registry_toml
from tests.support.keys import bearer, create_key

MODELS = [
    {"id": "alpha", "source": "tiny", "family": "tiny"},
    {"id": "beta", "source": "./beta", "family": "sd1", "sizes": [[512, 512], [512, 768]]},
]


@pytest.fixture
def settings(make_settings, clean_redis, tmp_path: Path) -> Settings:
    (tmp_path / "models.toml").write_text(registry_toml(MODELS))
    return make_settings(models_file=tmp_path / "models.toml")


def client_for(settings: Settings, limits: KeyLimits | None = None) -> Iterator[httpx.Client]:
    headers = bearer(create_key(settings, limits=limits))
    with serve_app(create_app(settings)) as base_url, httpx.Client(base_url=base_url, headers=headers) as client:
        yield client


@pytest.fixture
def api(settings: Settings) -> Iterator[httpx.Client]:
    yield from client_for(settings, KeyLimits(max_concurrent_jobs=1))


def queued(settings: Settings, model: str) -> int:
    return int(redis.Redis.from_url(settings.redis_url).llen(f"rq:queue:{queue_name(settings, model)}"))


def test_no_worker_is_a_503_and_spends_no_quota_nor_idempotency_key(api: httpx.Client, settings: Settings) -> None:
    body = {"prompt": "a fox", "model": "alpha"}
    for _ in range(3):  # the key may hold one job: refusals must not count
        resp = api.post("/v1/images", json=body, headers={"Idempotency-Key": "k-1"})
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "no_worker" and resp.headers["Retry-After"] == "10"
    assert queued(settings, "alpha") == 0
    conn = redis.Redis.from_url(settings.redis_url)
    announce(conn, settings, "alpha", "w-1", ttl_s=30)
    resp = api.post("/v1/images", json=body, headers={"Idempotency-Key": "k-1"})
    assert resp.status_code == 202, resp.text
    assert queued(settings, "alpha") == 1
    # Routing is per model: alpha's worker does not serve beta.
    resp = api.post("/v1/images", json={"prompt": "a fox", "model": "beta", "width": 512, "height": 768})
    assert resp.status_code == 503 and "'beta'" in resp.json()["error"]["message"]
    # The job now shows no waiting reason; once its worker is gone it says why it waits.
    job_id = api.post("/v1/images", json=body, headers={"Idempotency-Key": "k-1"}).json()["id"]  # a replay
    assert api.get(f"/v1/images/{job_id}").json()["waiting_for"] is None
    withdraw(conn, settings, "alpha", "w-1")
    view = api.get(f"/v1/images/{job_id}").json()
    assert (view["status"], view["waiting_for"]) == ("queued", "no_worker")
    models = {m["id"]: m["workers"] for m in api.get("/v1/models").json()["data"]}
    assert models == {"alpha": 0, "beta": 0}


def test_validation_comes_first_sizes_are_per_model(api: httpx.Client, settings: Settings) -> None:
    resp = api.post("/v1/images", json={"prompt": "a fox", "model": "beta", "width": 768, "height": 512})
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "width" and "512x512, 512x768" in resp.json()["error"]["message"]
    resp = api.post("/v1/images", json={"prompt": "a fox", "model": "gamma"})
    assert resp.status_code == 422 and "alpha, beta" in resp.json()["error"]["message"]


def test_scale_from_zero_queues_and_shows_the_reason(settings: Settings) -> None:
    scale = settings.model_copy(update={"queue_without_workers": True})
    for api in client_for(scale):
        resp = api.post("/v1/images", json={"prompt": "a fox", "model": "beta"})
        assert resp.status_code == 202, resp.text
        view = api.get(f"/v1/images/{resp.json()['id']}").json()
        assert (view["status"], view["waiting_for"], view["model"]) == ("queued", "no_worker", "beta")
        assert queued(settings, "beta") == 1
