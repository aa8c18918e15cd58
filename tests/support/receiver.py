"""A real HTTP receiver on loopback for webhook and retry tests: records every request and
answers from a script of statuses (the last one repeats)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """``statuses``: what to answer, in order; ``extra_headers``: sent with every answer."""

    url: str
    statuses: list[int]
    extra_headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"{}"
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def next_status(self) -> int:
        index = min(len(self.requests) - 1, len(self.statuses) - 1)
        return self.statuses[index]

    def wait_for(self, count: int, timeout_s: float) -> list[Received]:
        """Until ``count`` requests have arrived (AssertionError after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"only {len(self.requests)} of {count} requests arrived in {timeout_s} s")
                self.arrived.wait(remaining)
            return list(self.requests)


@contextmanager
def receiver(statuses: list[int] | None = None, **kwargs: object) -> Iterator[Receiver]:
    """Serve on 127.0.0.1 (a free port) until the block ends."""
    state: Receiver | None = None

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            assert state is not None
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            with state.arrived:
                state.requests.append(Received(self.command, self.path, dict(self.headers.items()), body))
                status = state.next_status()
                state.arrived.notify_all()
            self.send_response(status)
            for name, value in state.extra_headers.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        do_GET = do_POST = do_DELETE = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Receiver(f"http://127.0.0.1:{server.server_address[1]}", statuses or [200], **kwargs)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, name="test-receiver", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
