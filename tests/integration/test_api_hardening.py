"""HTTP hardening over real HTTP: body limits before parsing, security headers, CORS, 429s,
tenant isolation of reads, cancels and listings, and error bodies without internals."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
import redis

from api.app import create_app
from core.config import Settings
from core.models import queue_name
from tests.conftest import SettingsFactory
from tests.support.api_server import serve_app
from tests.support.keys import bearer, create_key

LIMIT = 64 * 1024


@pytest.fixture
def settings(make_settings: SettingsFactory, clean_redis: redis.Redis) -> Settings:
    return make_settings(max_body_bytes=LIMIT, rate_limit_rps=0)


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    with serve_app(create_app(settings)) as url:
        yield url


def _queued(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.redis_url).llen(f"rq:queue:{queue_name(settings, 'tiny')}"))


def _raw(base_url: str, request: bytes) -> bytes:
    """Send raw bytes and read the answer: for requests an HTTP client would not send."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_a_declared_oversized_body_is_413_before_a_byte_is_read(settings: Settings, base_url: str) -> None:
    token = create_key(settings)
    # 10 GB declared, none sent: the answer must come without waiting for the body.
    head = (
        f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
    ).encode()
    answer = _raw(base_url, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"payload_too_large"' in answer and b"connection: close" in answer.lower()
    assert _queued(settings) == 0


def test_a_streamed_body_is_cut_off_at_the_limit(settings: Settings, base_url: str) -> None:
    headers = bearer(create_key(settings))
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"prompt": "'
        for _ in range(64):  # 4 MiB of prompt, chunked: no Content-Length to trust
            sent += 65536
            yield b"x" * 65536
        yield b'"}'

    try:
        resp = httpx.post(f"{base_url}/v1/images", content=chunks(), headers=headers, timeout=10)
        assert resp.status_code == 413 and resp.json()["error"]["param"] == "body"
    except httpx.TransportError:
        pass  # the server may close before the client has finished writing; also a refusal
    assert _queued(settings) == 0
    # Just under the limit is parsed (and refused for the prompt length, by validation).
    body = b'{"prompt": "' + b"x" * (LIMIT - 20) + b'"}'
    resp = httpx.post(f"{base_url}/v1/images", content=body, headers={**headers, "content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "prompt"


def test_an_unauthenticated_body_is_never_read(settings: Settings, base_url: str) -> None:
    head = b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000\r\n\r\n"
    answer = _raw(base_url, head)  # the 50 kB never come: the 401 must not wait for them
    assert answer.startswith(b"HTTP/1.1 401")


def test_security_headers_on_every_response(settings: Settings, base_url: str) -> None:
    headers = bearer(create_key(settings))
    paths = ("/healthz", "/metrics", "/v1/models", "/v1/images/" + "0" * 32, "/v1/x")
    for path, auth in ((p, headers if p.startswith("/v1/") else {}) for p in paths):
        resp = httpx.get(base_url + path, headers=auth)
        assert resp.headers["x-content-type-options"] == "nosniff", path
        assert resp.headers["x-frame-options"] == "DENY"
        assert resp.headers["referrer-policy"] == "no-referrer"
        assert resp.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert resp.headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in resp.headers  # only when configured
        assert "access-control-allow-origin" not in resp.headers  # CORS off by default
    docs = httpx.get(base_url + "/docs")
    assert "https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]


def test_hsts_cors_and_docs_when_configured(make_settings: SettingsFactory, clean_redis: redis.Redis) -> None:
    settings = make_settings(hsts_max_age_s=31536000, cors_allow_origins="https://app.example", docs_enabled=False)
    with serve_app(create_app(settings)) as url:
        assert httpx.get(url + "/healthz").headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        allowed = httpx.options(
            url + "/v1/images", headers={**preflight, "Access-Control-Request-Headers": "authorization"}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-credentials" not in allowed.headers
        other = httpx.options(url + "/v1/images", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert httpx.get(url + path).status_code in (401, 404), path


def test_over_the_request_rate_is_429_with_retry_after(
    make_settings: SettingsFactory, clean_redis: redis.Redis
) -> None:
    settings = make_settings(rate_limit_rps=0.01, rate_limit_burst=3)
    token, other = create_key(settings), create_key(settings)
    with serve_app(create_app(settings)) as url:
        codes = [httpx.get(url + "/v1/models", headers=bearer(token)).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        resp = httpx.get(url + "/v1/models", headers=bearer(token))
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.json()["error"] == {
            "code": "rate_limited",
            "message": resp.json()["error"]["message"],
            "param": "requests_per_second",
        }
        assert httpx.get(url + "/v1/models", headers=bearer(other)).status_code == 200  # other keys unaffected
        assert httpx.get(url + "/healthz").status_code == 200  # probes are never limited


def test_tenants_cannot_see_list_or_cancel_each_others_jobs(settings: Settings, base_url: str) -> None:
    alice, bob = bearer(create_key(settings, tenant="alice")), bearer(create_key(settings, tenant="bob"))
    with httpx.Client(base_url=base_url, timeout=10) as client:
        job_id = client.post("/v1/images", json={"prompt": "alice's secret"}, headers=alice).json()["id"]
        missing = client.get("/v1/images/" + "0" * 32, headers=bob)
        for resp in (
            client.get(f"/v1/images/{job_id}", headers=bob),
            client.delete(f"/v1/images/{job_id}", headers=bob),
        ):
            assert resp.status_code == 404
            # Indistinguishable from a job that does not exist (only the id differs).
            assert resp.json()["error"]["message"].replace(job_id, "0" * 32) == missing.json()["error"]["message"]
        assert client.get("/v1/images", headers=bob).json() == {"data": []}
        assert [j["id"] for j in client.get("/v1/images", headers=alice).json()["data"]] == [job_id]
        assert client.get(f"/v1/images/{job_id}", headers=alice).json()["status"] == "queued"  # not canceled by bob


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/images", b"{not json"),
        ("POST", "/v1/images", b'{"prompt": "\\ud800"}'),
        ("POST", "/v1/images", b'{"prompt": "x", "width": 1e400}'),
        ("POST", "/v1/images", b"[]"),
        ("GET", "/v1/images/%00", None),
        ("GET", "/v1/images/" + "a" * 5000, None),
        ("POST", "/v1/images?wait=nan", b'{"prompt": "x"}'),
        ("POST", "/v1/admin/keys", b'{"tenant": "../etc", "name": "x"}'),
    ],
)
def test_hostile_requests_get_4xx_json_without_internals(
    settings: Settings, base_url: str, method: str, path: str, body: bytes | None
) -> None:
    headers = {
        **bearer(create_key(settings, scopes=["images:read", "images:write", "admin"])),
        "content-type": "application/json",
    }
    resp = httpx.request(method, base_url + path, content=body, headers=headers, timeout=10)
    assert 400 <= resp.status_code < 500, resp.text
    assert set(resp.json()["error"]) == {"code", "message", "param"}
    for leak in ("Traceback", 'File "', settings.redis_url, str(settings.data_dir), "/work/"):
        assert leak not in resp.text
