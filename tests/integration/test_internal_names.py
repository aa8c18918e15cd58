"""Clients get a stable code and a human message, never the server's internal names: no
exception class in a 503 body (Redis down), no TLS library source location in a webhook's
``last_error``. The details go to the logs (issue 18, defect 3). A failed job's message is
checked in tests/integration/test_batch_isolation.py and tests/e2e/test_batch_isolation.py.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.resources import ApiServices
from api.webhook_sender import WebhookSender
from devstack.net import free_port
from devstack.redis_server import start_redis
from tests.conftest import SettingsFactory
from tests.support.api_server import serve_app

#: What an internal name looks like: an exception class, a C source location, an SSL reason.
INTERNAL = re.compile(r"\b\w*(Error|Exception)\b|\.c:\d+|\[SSL")


def test_a_503_while_redis_is_down_names_no_exception_class(
    make_settings: SettingsFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis = start_redis(tmp_path / "redis")
    settings = make_settings(redis_url=redis.url, auth_enabled=False, rate_limit_rps=0)
    try:
        with serve_app(create_app(settings)) as url:
            assert httpx.post(f"{url}/v1/images", json={"prompt": "a fox"}, timeout=10).status_code == 202
            redis.stop()
            for resp in (
                httpx.post(f"{url}/v1/images", json={"prompt": "a fox"}, timeout=30),
                httpx.get(f"{url}/v1/images/{'0' * 32}", timeout=30),
            ):
                assert resp.status_code == 503, resp.text
                error = resp.json()["error"]
                assert error["code"] == "queue_unavailable" and "Retry-After" in resp.headers
                assert not INTERNAL.search(resp.text), resp.text
                assert "job queue is unavailable" in error["message"]
    finally:
        redis.stop()
    # The cause is in the API's log instead.
    assert any("ConnectionError" in record.getMessage() for record in caplog.records)


def _self_signed(tmp: Path) -> ssl.SSLContext:
    cert, key = tmp / "hook.crt", tmp / "hook.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hooks.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[int]:
    """An HTTPS server on loopback whose certificate no client trusts."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(200)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = _self_signed(tmp_path).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_webhook_last_error_is_a_human_phrase(make_settings: SettingsFactory, tls_receiver: int) -> None:
    services = ApiServices.build(make_settings(webhook_allow_loopback=True, webhook_timeout_s=5))
    try:
        sender = WebhookSender(services)
        untrusted = sender._send(f"https://127.0.0.1:{tls_receiver}/hook", "acme", "msg_1", b"{}")
        refused = sender._send(f"http://127.0.0.1:{free_port()}/hook", "acme", "msg_2", b"{}")
    finally:
        services.close()
    assert untrusted == (None, "could not connect to 127.0.0.1: its TLS certificate could not be verified")
    assert refused == (None, "could not connect to 127.0.0.1: the connection was refused")
