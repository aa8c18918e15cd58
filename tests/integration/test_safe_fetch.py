"""core.safe_fetch against real HTTP(S) receivers on 127.0.0.1.

Loopback is refused by default; these tests opt in with ``FetchPolicy(allow_loopback=True)``
where a receiver must be reached, and otherwise prove that nothing reached it.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.errors import UnsafeUrl
from core.safe_fetch import FetchPolicy, fetch

LOOPBACK_OK = FetchPolicy(allow_loopback=True, max_bytes=64 * 1024, timeout_s=5)


@dataclass
class Receiver:
    port: int
    seen: list[dict[str, str]] = field(default_factory=list)
    #: path -> (status, headers, body, chunked)
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            receiver.seen.append({"path": self.path, "host": self.headers.get("Host", "")})
            status, headers, body = receiver.routes.get(self.path, (200, {}, b"ok"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Transfer-Encoding" in headers:
                self.end_headers()
                for start in range(0, len(body), 8192):
                    piece = body[start : start + 8192]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve(None)


def _serve(tls: ssl.SSLContext | None) -> Iterator[Receiver]:
    recv = Receiver(port=0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recv))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    recv.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield recv
    finally:
        server.shutdown()
        server.server_close()


def test_loopback_is_refused_by_default_and_nothing_is_sent(receiver: Receiver) -> None:
    with pytest.raises(UnsafeUrl, match=r"127\.0\.0\.1 is not a public unicast address"):
        fetch(f"http://127.0.0.1:{receiver.port}/hook")
    with pytest.raises(UnsafeUrl, match="refused"):
        fetch(f"http://localhost:{receiver.port}/hook")
    assert receiver.seen == []


def test_connects_to_the_checked_address_once_resolved(receiver: Receiver) -> None:
    # "rebind.test" resolves nowhere: success proves the client used the address we checked
    # instead of resolving the name again, and the Host header still names the host.
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    result = fetch(f"http://rebind.test:{receiver.port}/hook", policy=LOOPBACK_OK, resolver=resolver)
    assert (result.status_code, result.content, result.address) == (200, b"ok", "127.0.0.1")
    assert calls == ["rebind.test"]
    assert receiver.seen == [{"path": "/hook", "host": f"rebind.test:{receiver.port}"}]


def test_redirects_are_never_followed(receiver: Receiver) -> None:
    receiver.routes["/hook"] = (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    receiver.routes["/to-self"] = (307, {"Location": "/secret"}, b"")
    assert fetch(f"http://127.0.0.1:{receiver.port}/hook", policy=LOOPBACK_OK).status_code == 302
    assert fetch(f"http://127.0.0.1:{receiver.port}/to-self", policy=LOOPBACK_OK).status_code == 307
    assert [s["path"] for s in receiver.seen] == ["/hook", "/to-self"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_size_limit_while_streaming(receiver: Receiver, chunked: bool) -> None:
    headers = {"Transfer-Encoding": "chunked"} if chunked else {}
    receiver.routes["/big"] = (200, headers, b"x" * (LOOPBACK_OK.max_bytes + 1))
    receiver.routes["/fits"] = (200, headers, b"x" * LOOPBACK_OK.max_bytes)
    with pytest.raises(UnsafeUrl, match=str(LOOPBACK_OK.max_bytes)):
        fetch(f"http://127.0.0.1:{receiver.port}/big", policy=LOOPBACK_OK)
    assert len(fetch(f"http://127.0.0.1:{receiver.port}/fits", policy=LOOPBACK_OK).content) == LOOPBACK_OK.max_bytes


def test_a_closed_port_is_an_unsafe_url_error_not_a_crash(receiver: Receiver) -> None:
    from devstack.net import free_port

    with pytest.raises(UnsafeUrl, match="could not connect"):
        fetch(f"http://127.0.0.1:{free_port()}/", policy=LOOPBACK_OK)


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_checks_the_certificate_against_the_host_name_not_the_ip(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "hooks.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    trust = ssl.create_default_context(cafile=str(cert))
    for recv in _serve(server_ctx):
        resolver = lambda host, port: ["127.0.0.1"]  # noqa: E731
        ok = fetch(f"https://hooks.test:{recv.port}/hook", policy=LOOPBACK_OK, resolver=resolver, verify=trust)
        assert ok.status_code == 200 and recv.seen[-1]["host"] == f"hooks.test:{recv.port}"
        # Same server, a name its certificate does not carry:
        with pytest.raises(UnsafeUrl, match="its TLS certificate could not be verified"):
            fetch(f"https://other.test:{recv.port}/hook", policy=LOOPBACK_OK, resolver=resolver, verify=trust)
