"""The body limit and the body budget over real HTTP (uvicorn on a loopback port): an
over-limit body is refused while it is still arriving, a body at the limit is accepted, and
large bodies past the budget wait before they are read (or get 503 ``server_busy``)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from fastapi import FastAPI, Request
from prometheus_client import REGISTRY

from api.app import create_app
from api.body_limit import SMALL_BODY_BYTES, BodySizeLimit
from api.errors import install_error_handlers
from core.config import Settings
from core.models import queue_name
from tests.conftest import SettingsFactory
from tests.support.api_server import serve_app
from tests.support.bodies import padded_json
from tests.support.keys import bearer, create_key
from tests.support.processes import wait_until

LIMIT = 2 * SMALL_BODY_BYTES  # large enough to take part in the budget
VALID = {"prompt": "a red circle", "steps": 2}


@pytest.fixture
def settings(make_settings: SettingsFactory, clean_redis: redis.Redis) -> Settings:
    return make_settings(max_body_bytes=LIMIT, max_body_bytes_in_flight=LIMIT, rate_limit_rps=0)


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    with serve_app(create_app(settings)) as url:
        yield url


def _queued(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.redis_url).llen(f"rq:queue:{queue_name(settings, 'tiny')}"))


def _connect(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=20)


def _head(token: str, framing: str) -> bytes:
    return (
        f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (the refusals close the connection)."""
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_a_declared_oversized_body_is_refused_while_it_is_still_arriving(settings: Settings, base_url: str) -> None:
    with _connect(base_url) as sock:
        sock.sendall(_head(create_key(settings), f"Content-Length: {4 * LIMIT}"))
        # 16 KiB of the 2 MiB declared, and no more: so little that the server's socket reads
        # take it all (bytes left unread when it closes would make the kernel reset the
        # connection, which can drop the answer before the client reads it).
        sock.sendall(b'{"prompt": "' + b"x" * 16384)
        answer = _answer(sock)  # comes although the client never sends the rest
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"code":"payload_too_large"' in answer and b"connection: close" in answer.lower()
    assert _queued(settings) == 0


def test_a_chunked_body_is_refused_once_past_the_limit(settings: Settings, base_url: str) -> None:
    with _connect(base_url) as sock:
        sock.sendall(_head(create_key(settings), "Transfer-Encoding: chunked"))
        sock.sendall(_chunk(b'{"prompt": "'))
        for _ in range(LIMIT // 4096 + 1):  # just past the limit; the final 0-chunk never comes
            sock.sendall(_chunk(b"x" * 4096))
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"param":"body"' in answer and str(LIMIT).encode() in answer
    assert _queued(settings) == 0


def test_a_body_at_the_limit_is_accepted_and_one_byte_more_is_not(settings: Settings, base_url: str) -> None:
    headers = {**bearer(create_key(settings)), "content-type": "application/json"}
    at_limit = padded_json(LIMIT, VALID)
    assert len(at_limit) == LIMIT
    with httpx.Client(base_url=base_url, headers=headers, timeout=20) as client:
        assert client.post("/v1/images", content=at_limit).status_code == 202
        pieces = [at_limit[i : i + 10_000] for i in range(0, LIMIT, 10_000)]
        assert client.post("/v1/images", content=iter(pieces)).status_code == 202  # chunked
        over = client.post("/v1/images", content=padded_json(LIMIT + 1, VALID))
        assert over.status_code == 413 and over.json()["error"]["code"] == "payload_too_large"
    assert _queued(settings) == 2


def _metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _until(condition: Callable[[], bool], what: str) -> None:
    wait_until(condition, 20.0, what, interval_s=0.02)


def test_a_large_body_waits_for_the_budget_before_it_is_read(settings: Settings, base_url: str) -> None:
    token = create_key(settings)
    body = padded_json(LIMIT, VALID)
    results: list[int] = []
    with _connect(base_url) as first:
        first.sendall(_head(token, f"Content-Length: {LIMIT}") + body[: LIMIT // 2])  # holds the whole budget
        _until(lambda: _metric(base_url, "sfumato_http_body_bytes_in_flight") == LIMIT, "the first body's reservation")
        second = threading.Thread(
            target=lambda: results.append(
                httpx.post(
                    f"{base_url}/v1/images",
                    content=body,
                    headers={**bearer(token), "content-type": "application/json"},
                    timeout=30,
                ).status_code
            )
        )
        second.start()
        _until(lambda: _metric(base_url, "sfumato_http_bodies_waiting") == 1, "the second body to wait")
        assert _queued(settings) == 0 and not results  # the second body is not read meanwhile
        first.sendall(body[LIMIT // 2 :])
        assert first.recv(65536).startswith(b"HTTP/1.1 202")
    second.join(timeout=30)
    assert results == [202]
    assert _metric(base_url, "sfumato_http_body_bytes_in_flight") == 0
    assert _metric(base_url, "sfumato_http_bodies_waiting") == 0
    assert _queued(settings) == 2


def test_a_body_that_finds_no_room_in_time_gets_503_server_busy() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    app.add_middleware(BodySizeLimit, max_bytes=LIMIT, budget_bytes=LIMIT, wait_s=0.2)
    body = b"x" * LIMIT
    in_flight = "sfumato_http_body_bytes_in_flight"  # this process's gauge: the server runs in it
    with serve_app(app) as url, _connect(url) as first:
        first.sendall(f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT}\r\n\r\n".encode() + body[:100])
        _until(lambda: REGISTRY.get_sample_value(in_flight) == LIMIT, "the first body's reservation")
        busy = httpx.post(f"{url}/echo", content=body, timeout=20)
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "server_busy" and int(busy.headers["retry-after"]) >= 1
        assert httpx.post(f"{url}/echo", content=b"small").json() == {"read": 5}  # small bodies never wait
        first.sendall(body[100:])
        assert b'{"read":' in first.recv(65536)
    assert REGISTRY.get_sample_value(in_flight) == 0
