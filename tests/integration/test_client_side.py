"""The client side without a worker, over real HTTP and a real Redis: event streams (queue
positions, the final state, disconnects), webhooks (SSRF refusal, signing, retries, filters)
and the SDK's retries.

Jobs here never run (no worker); they end by being canceled, which is deterministic.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from rq import Queue

from api.app import create_app
from api.event_stream import STREAMS_OPEN
from core.config import Settings
from core.priority import queue_name
from sfumato import AsyncClient, Client, RateLimitError, ServerError
from sfumato._common import SSEParser
from sfumato.types import JobEvent
from sfumato.webhooks import ReplayGuard, WebhookVerificationError, verify
from tests.conftest import SettingsFactory
from tests.support.api_server import serve_app
from tests.support.keys import bearer, create_key
from tests.support.processes import wait_until
from tests.support.receiver import receiver

pytestmark = pytest.mark.timeout(120)


@dataclass
class Api:
    base_url: str
    client: httpx.Client
    settings: Settings
    token: str


def _settings(make_settings: SettingsFactory, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "queue_prefix": f"client-side-{secrets.token_hex(4)}",
        "rate_limit_rps": 0,
        "images_per_minute": 0,
        "max_concurrent_jobs": 0,
        "events_poll_s": 0.1,
        "webhook_poll_s": 0.1,
        "webhook_retry_base_s": 0.2,
    }
    values.update(overrides)
    return make_settings(**values)


@pytest.fixture
def api(make_settings: SettingsFactory) -> Iterator[Api]:
    settings = _settings(make_settings, webhook_allow_loopback=True)
    token = create_key(settings, tenant="acme")
    with (
        serve_app(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, headers=bearer(token), timeout=20) as client,
    ):
        yield Api(base_url, client, settings, token)


def _submit(api: Api, **fields: object) -> str:
    resp = api.client.post("/v1/images", json={"prompt": "a fox", "steps": 2, **fields})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def _events(response: httpx.Response) -> Iterator[JobEvent]:
    parser = SSEParser()
    for line in response.iter_lines():
        event = parser.feed(line)
        if event is not None:
            yield event


# --- event streams ---------------------------------------------------------------------------


def test_the_event_stream_shows_queue_positions_and_ends_with_the_final_state(api: Api) -> None:
    first, second = _submit(api), _submit(api)
    with api.client.stream("GET", f"/v1/images/{second}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
        queued = next(events)
        assert (queued.event, queued.data["queue_position"]) == ("queued", 1)
        assert api.client.delete(f"/v1/images/{first}").status_code == 200
        moved = next(events)
        assert (moved.event, moved.data["queue_position"]) == ("position", 0)
        assert api.client.delete(f"/v1/images/{second}").status_code == 200
        final = next(events)
        assert final.event == "canceled" and final.data["id"] == second and final.data["status"] == "canceled"
        assert list(events) == []  # the server ended the stream
    ids = [int(e.id or 0) for e in (queued, moved, final)]
    assert ids == sorted(ids)


def test_a_job_taken_off_the_queue_but_not_yet_running_reports_no_position(api: Api) -> None:
    """Between a worker's taking a job (it leaves the queue list) and its writing ``running``, the
    job has no position; the stream says nothing rather than a ``position`` of null (CI once saw
    one break a client's ordering)."""
    job_id = _submit(api)
    connection = redis.Redis.from_url(api.settings.redis_url)
    model = api.client.get(f"/v1/images/{job_id}").json()["model"]
    queue_key = Queue(queue_name(api.settings, model), connection=connection).key
    timeout = httpx.Timeout(20, read=1.0)  # 10 of the stream's 0.1 s polls; keepalives are 15 s apart
    with api.client.stream("GET", f"/v1/images/{job_id}/events", timeout=timeout) as response:
        events = _events(response)
        queued = next(events)
        assert (queued.event, queued.data["queue_position"]) == ("queued", 0)
        assert connection.lrem(queue_key, 1, job_id) == 1  # what a worker's take does to the list
        with pytest.raises(httpx.ReadTimeout):
            unexpected = next(events)
            pytest.fail(f"the stream sent {unexpected.event} {unexpected.data}")
    assert api.client.delete(f"/v1/images/{job_id}").status_code == 202  # off the queue: as if running


def test_get_shows_the_queue_position(api: Api) -> None:
    first, second = _submit(api), _submit(api)
    assert api.client.get(f"/v1/images/{first}").json()["queue_position"] == 0
    assert api.client.get(f"/v1/images/{second}").json()["queue_position"] == 1
    for job_id in (first, second):
        api.client.delete(f"/v1/images/{job_id}")
    assert api.client.get(f"/v1/images/{second}").json()["queue_position"] is None


def test_an_unknown_job_has_no_stream(api: Api) -> None:
    resp = api.client.get("/v1/images/0123456789abcdef0123456789abcdef/events")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


def _blocked_clients(settings: Settings) -> int:
    """Connections blocked in a command (XREAD BLOCK) on the test's Redis right now."""
    connection = redis.Redis.from_url(settings.redis_url)
    try:
        return sum(1 for c in connection.client_list() if "b" in c.get("flags", ""))
    finally:
        connection.close()


def test_clients_that_disconnect_leave_no_stream_behind(api: Api) -> None:
    job_id = _submit(api)
    before = STREAMS_OPEN._value.get()
    for _ in range(3):
        with (
            httpx.Client(base_url=api.base_url, headers=bearer(api.token), timeout=20) as client,
            client.stream("GET", f"/v1/images/{job_id}/events") as response,
        ):
            events = _events(response)  # held: closing the line iterator would close the stream
            assert next(events).event == "queued"
            assert STREAMS_OPEN._value.get() >= before + 1
        # leaving the block closes the connection mid-stream
    wait_until(lambda: STREAMS_OPEN._value.get() == before, 10, "the streams to be released")
    wait_until(lambda: _blocked_clients(api.settings) == 0, 10, "no Redis read left blocking")
    api.client.delete(f"/v1/images/{job_id}")


# --- webhooks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
    ],
)
def test_webhook_urls_to_private_addresses_are_refused_at_submit(make_settings: SettingsFactory, url: str) -> None:
    settings = _settings(make_settings)  # webhook_allow_loopback off: the default
    token = create_key(settings, tenant="acme")
    with serve_app(create_app(settings)) as base_url:
        resp = httpx.post(
            f"{base_url}/v1/images", json={"prompt": "x", "webhook_url": url}, headers=bearer(token), timeout=20
        )
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["code"] == "unsafe_url" and error["param"] == "webhook_url"
        listed = httpx.get(f"{base_url}/v1/images", headers=bearer(token), timeout=20).json()["data"]
        assert listed == []  # nothing was enqueued


def test_a_webhook_is_signed_retried_after_a_5xx_and_recorded_on_the_job(api: Api) -> None:
    secret = api.client.get("/v1/webhooks/secret").json()["secret"]
    assert secret.startswith("whsec_") and api.client.get("/v1/webhooks/secret").json()["secret"] == secret
    with receiver([500, 200]) as hook:
        job_id = _submit(api, webhook_url=f"{hook.url}/hooks/sfumato")
        assert api.client.get(f"/v1/images/{job_id}").json()["webhook"]["state"] == "waiting"
        assert api.client.delete(f"/v1/images/{job_id}").status_code == 200
        first, second = hook.wait_for(2, 30)
    for delivery in (first, second):
        assert delivery.method == "POST" and delivery.path == "/hooks/sfumato"
        body = verify(delivery.body, delivery.headers, secret)
        assert body["type"] == "image.canceled" and body["data"]["id"] == job_id
        assert "webhook" not in body["data"] or body["data"]["webhook"] is None
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # one delivery, two attempts

    def delivered() -> bool:
        return api.client.get(f"/v1/images/{job_id}").json()["webhook"]["state"] == "delivered"

    wait_until(delivered, 10, "the delivery to be recorded")
    webhook = api.client.get(f"/v1/images/{job_id}").json()["webhook"]
    assert (webhook["attempts"], webhook["last_status"]) == (2, 200)
    assert webhook["url"] == f"{hook.url}/hooks/sfumato" and webhook["delivered_at"] >= webhook["last_attempt_at"]

    # A receiver using the helper refuses a tampered body, a replay of the same attempt, and
    # the same attempt after the tolerance window.
    tampered = second.body.replace(b"image.canceled", b"image.succeeded")
    with pytest.raises(WebhookVerificationError):
        verify(tampered, second.headers, secret)
    guard = ReplayGuard(secret)
    guard.verify(second.body, second.headers)
    with pytest.raises(WebhookVerificationError):
        guard.verify(second.body, second.headers)
    with pytest.raises(WebhookVerificationError):
        verify(second.body, second.headers, secret, now=int(second.headers["webhook-timestamp"]) + 301)


def test_a_webhook_gives_up_after_the_last_attempt_and_respects_the_events_filter(
    make_settings: SettingsFactory,
) -> None:
    settings = _settings(make_settings, webhook_allow_loopback=True, webhook_max_attempts=2)
    token = create_key(settings, tenant="acme")
    with (
        serve_app(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, headers=bearer(token), timeout=20) as client,
        receiver([503]) as hook,
    ):
        failing = client.post("/v1/images", json={"prompt": "x", "webhook_url": hook.url}).json()["id"]
        filtered = client.post(
            "/v1/images", json={"prompt": "y", "webhook_url": hook.url, "webhook_events": ["succeeded"]}
        ).json()["id"]
        for job_id in (failing, filtered):
            assert client.delete(f"/v1/images/{job_id}").status_code == 200

        def settled() -> bool:
            states = [client.get(f"/v1/images/{j}").json()["webhook"]["state"] for j in (failing, filtered)]
            return states == ["failed", "skipped"]

        wait_until(settled, 30, "both webhooks to settle")
        assert len(hook.requests) == 2  # two attempts for the first, none for the filtered one
        assert all(json.loads(r.body)["data"]["id"] == failing for r in hook.requests)
        webhook = client.get(f"/v1/images/{failing}").json()["webhook"]
        assert (webhook["attempts"], webhook["last_status"]) == (2, 503)


def test_a_webhook_secret_can_be_rotated(api: Api) -> None:
    old = api.client.get("/v1/webhooks/secret").json()["secret"]
    new = api.client.post("/v1/webhooks/secret").json()["secret"]
    assert new != old and api.client.get("/v1/webhooks/secret").json()["secret"] == new


# --- SDK retries -----------------------------------------------------------------------------

_JOB = {"id": "j1", "status": "queued", "model": "tiny", "mode": "txt2img", "n": 1, "created_at": time.time()}


def test_the_sdk_retries_503_and_429_honouring_retry_after_with_one_idempotency_key() -> None:
    with receiver([503, 429, 202], extra_headers={"Retry-After": "0"}, body=json.dumps(_JOB).encode()) as server:
        with Client(server.url, "sf_test", max_retries=3) as client:
            job = client.submit("a fox", n=2, seed=None)
        assert job.id == "j1" and job.status == "queued"
    keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert len(server.requests) == 3 and len(keys) == 1  # the retries are the same submit
    assert all(r.headers["Authorization"] == "Bearer sf_test" for r in server.requests)
    assert json.loads(server.requests[0].body) == {"prompt": "a fox", "n": 2}


def test_the_sdk_raises_a_typed_error_when_retries_run_out() -> None:
    error = {"error": {"code": "queue_full", "message": "the queue is full", "param": "queue_depth"}}
    with (
        receiver([429], extra_headers={"Retry-After": "0"}, body=json.dumps(error).encode()) as server,
        Client(server.url, max_retries=1) as client,
        pytest.raises(RateLimitError) as caught,
    ):
        client.get("j1")
    assert (caught.value.code, caught.value.param, caught.value.status_code) == ("queue_full", "queue_depth", 429)
    assert len(server.requests) == 2


def test_the_sdk_retries_500_502_and_504_with_one_idempotency_key() -> None:
    """A 5xx from the API or a proxy in front of it (a crash's 500, a gateway's 502/504) is
    retried: safe, because the retried submit carries the same Idempotency-Key and so returns
    the job the first attempt may already have created."""
    with receiver([500, 502, 504, 202], body=json.dumps(_JOB).encode()) as server:
        with Client(server.url, "sf_test", max_retries=3) as client:
            job = client.submit("a fox", n=2)
        assert job.id == "j1"
    assert [r.method for r in server.requests] == ["POST"] * 4
    assert len({r.headers["Idempotency-Key"] for r in server.requests}) == 1
    assert len({r.body for r in server.requests}) == 1


def test_the_sdk_retries_a_get_after_a_5xx() -> None:
    with (
        receiver([502, 504, 200], body=json.dumps(_JOB).encode()) as server,
        Client(server.url, max_retries=2) as client,
    ):
        assert client.get("j1").id == "j1"
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/v1/images/j1")] * 3


def test_the_async_sdk_retries_a_5xx_with_one_idempotency_key() -> None:
    async def submit(url: str) -> str:
        async with AsyncClient(url, max_retries=2) as client:
            return (await client.submit("a fox")).id

    with receiver([502, 202], body=json.dumps(_JOB).encode()) as server:
        assert asyncio.run(submit(server.url)) == "j1"
    assert len(server.requests) == 2 and len({r.headers["Idempotency-Key"] for r in server.requests}) == 1


def test_a_500_past_max_retries_raises_server_error() -> None:
    error = {"error": {"code": "internal_error", "message": "internal error", "param": None}}
    with (
        receiver([500], body=json.dumps(error).encode()) as server,
        Client(server.url, max_retries=1) as client,
        pytest.raises(ServerError) as caught,
    ):
        client.get("j1")
    assert (caught.value.status_code, caught.value.code) == (500, "internal_error")
    assert len(server.requests) == 2  # the first attempt and one retry
