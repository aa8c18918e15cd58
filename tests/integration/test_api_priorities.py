"""Priorities through the API over real HTTP (no worker): the request field, the key's ceiling,
the queue a job lands on, its queue position, and the per-class depth in ``GET /v1/models``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from api.app import create_app
from core.apikeys import KeyStore
from core.config import Settings
from core.jobs import JobStore, connect
from core.keyfile import read_key_file, seed_keys
from core.priority import PRIORITIES, PriorityClass
from tests.support.api_server import serve_app
from tests.support.keys import bearer, create_key


@pytest.fixture
def settings(make_settings, clean_redis: redis.Redis) -> Settings:
    return make_settings(queue_without_workers=True)


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    with serve_app(create_app(settings)) as url:
        yield url


def client(base_url: str, settings: Settings, priority: PriorityClass = "standard", **kwargs: object) -> httpx.Client:
    token = create_key(settings, priority=priority, **kwargs)  # type: ignore[arg-type]
    return httpx.Client(base_url=base_url, timeout=10, headers=bearer(token))


def depths(settings: Settings) -> dict[str, int]:
    store = JobStore(connect(settings), settings)
    return {p: int(store.connection.llen(store.queue("tiny", p).key)) for p in PRIORITIES}


def test_a_request_gets_its_keys_class_and_may_ask_for_a_lower_one(base_url: str, settings: Settings) -> None:
    with client(base_url, settings, "standard") as api:
        plain = api.post("/v1/images", json={"prompt": "a fox"})
        assert plain.status_code == 202 and plain.json()["priority"] == "standard"
        lower = api.post("/v1/images", json={"prompt": "a fox", "priority": "batch"})
        assert lower.status_code == 202 and lower.json()["priority"] == "batch"
        assert api.get(f"/v1/images/{lower.json()['id']}").json()["priority"] == "batch"
    assert depths(settings) == {"interactive": 0, "standard": 1, "batch": 1}
    with client(base_url, settings, "interactive") as api:
        urgent = api.post("/v1/images", json={"prompt": "a fox"})
        assert urgent.status_code == 202 and urgent.json()["priority"] == "interactive"
    assert depths(settings) == {"interactive": 1, "standard": 1, "batch": 1}


@pytest.mark.parametrize(
    ("key", "asked"), [("standard", "interactive"), ("batch", "standard"), ("batch", "interactive")]
)
def test_asking_above_the_keys_class_is_a_422_and_queues_nothing(
    base_url: str, settings: Settings, key: PriorityClass, asked: PriorityClass
) -> None:
    with client(base_url, settings, key) as api:
        resp = api.post("/v1/images", json={"prompt": "a fox", "priority": asked})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == "priority" and key in error["message"] and asked in error["message"]
    assert depths(settings) == dict.fromkeys(PRIORITIES, 0)


def test_an_unknown_class_is_a_422_naming_the_field(base_url: str, settings: Settings) -> None:
    with client(base_url, settings) as api:
        resp = api.post("/v1/images", json={"prompt": "a fox", "priority": "urgent"})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "priority", resp.text


def test_with_auth_off_any_class_may_be_asked_for(make_settings, clean_redis: redis.Redis) -> None:
    settings = make_settings(queue_without_workers=True, auth_enabled=False)
    with serve_app(create_app(settings)) as url, httpx.Client(base_url=url, timeout=10) as api:
        assert api.post("/v1/images", json={"prompt": "x"}).json()["priority"] == "standard"
        assert api.post("/v1/images", json={"prompt": "x", "priority": "interactive"}).status_code == 202
    assert depths(settings)["interactive"] == 1


def test_queue_position_counts_higher_classes_and_models_shows_depth_per_class(
    base_url: str, settings: Settings
) -> None:
    with client(base_url, settings, "interactive") as api:
        bulk = [api.post("/v1/images", json={"prompt": "b", "priority": "batch"}).json()["id"] for _ in range(2)]
        standard = api.post("/v1/images", json={"prompt": "s", "priority": "standard"}).json()["id"]
        urgent = api.post("/v1/images", json={"prompt": "i"}).json()["id"]
        positions = {
            job_id: api.get(f"/v1/images/{job_id}").json()["queue_position"] for job_id in [*bulk, standard, urgent]
        }
        models = api.get("/v1/models").json()["data"]
    # Taken first: the interactive job, then the standard one, then the bulk jobs in order.
    assert positions == {urgent: 0, standard: 1, bulk[0]: 2, bulk[1]: 3}
    assert models[0]["queued"] == {"interactive": 1, "standard": 1, "batch": 2}


def test_keys_carry_a_class_through_the_admin_api_and_the_keys_file(
    base_url: str, settings: Settings, tmp_path: Path
) -> None:
    with client(base_url, settings, scopes=["admin"]) as admin:
        made = admin.post("/v1/admin/keys", json={"tenant": "acme", "name": "bulk", "priority": "batch"})
        assert made.status_code == 201 and made.json()["priority"] == "batch", made.text
        assert admin.get(f"/v1/admin/keys/{made.json()['id']}").json()["priority"] == "batch"
        bad = admin.post("/v1/admin/keys", json={"tenant": "acme", "name": "x", "priority": "vip"})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "priority"
    with httpx.Client(base_url=base_url, timeout=10, headers=bearer(made.json()["key"])) as api:
        assert api.post("/v1/images", json={"prompt": "x"}).json()["priority"] == "batch"
    path = tmp_path / "keys.json"
    token = "sf_" + "a" * 16 + "_" + "B" * 43
    path.write_text(json.dumps({"keys": [{"key": token, "tenant": "acme", "priority": "interactive"}]}))
    connection = connect(settings)
    seeded = seed_keys(KeyStore(connection, settings), read_key_file(path))
    assert seeded[0].priority == "interactive"
    assert KeyStore(connection, settings).authenticate(token).priority == "interactive"
