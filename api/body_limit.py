"""The request body limit and the budget of body bytes in flight: one pure ASGI middleware.

Pure ASGI (not ``BaseHTTPMiddleware``) because it must act on the raw byte stream, before the
app reads (and so parses) anything:

- a body whose ``Content-Length`` is over the limit is answered 413 before a byte of it is
  read, with ``Connection: close`` (the rest is never read);
- a chunked body (no ``Content-Length``) is counted as the app reads it, through a wrapped
  ``receive``; the read that passes the limit raises instead of returning, so the app never
  holds more than the limit, and its response is replaced by the 413. Nothing is buffered
  here: the bytes go straight to the app, which holds the one copy it would hold anyway;
- every body above :data:`SMALL_BODY_BYTES` first reserves its size (its ``Content-Length``, or
  the whole limit for a chunked one) from a per-process budget of body bytes in flight, and
  gives it back when its response is sent. While the budget is spent, a request waits before
  its body is read (its bytes stay in the client and the kernel's socket buffers), for at most
  :data:`BUDGET_WAIT_S`, then gets 503 ``server_busy`` with ``Retry-After``. A lone request
  larger than the budget still runs (when nothing else is in flight). This is what keeps the
  API's memory bounded under many simultaneous maximum-size bodies: parsing a body makes
  copies (JSON text, the job's serialized payload), so memory is a small multiple of the bytes
  in flight, and those are capped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import response_for
from api.metrics import BODIES_WAITING, BODY_BYTES_IN_FLIGHT
from core.errors import PayloadTooLarge, ServerBusy, ServiceError

#: Bodies up to this size skip the budget: they cannot add up to much, and probes, reads and
#: ordinary text-to-image requests must never wait behind uploads.
SMALL_BODY_BYTES = 256 * 1024
#: Longest wait for budget before a 503; a client's retry (the SDK retries 503) comes later.
BUDGET_WAIT_S = 30.0


class BodyBudget:
    """Bytes of request bodies being read or processed at once, capped at ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self._changed = asyncio.Condition()

    def _fits(self, nbytes: int) -> bool:
        return self.in_flight == 0 or self.in_flight + nbytes <= self.capacity

    @asynccontextmanager
    async def reserve(self, nbytes: int, wait_s: float = BUDGET_WAIT_S) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the block; :class:`ServerBusy` after ``wait_s``."""
        async with self._changed:
            if not self._fits(nbytes):
                BODIES_WAITING.inc()
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda: self._fits(nbytes)), wait_s)
                except TimeoutError:
                    raise ServerBusy(
                        f"the API is reading {self.in_flight} bytes of other request bodies (the budget is "
                        f"{self.capacity}, SFUMATO_MAX_BODY_BYTES_IN_FLIGHT); retry after Retry-After",
                        param="body",
                    ) from None
                finally:
                    BODIES_WAITING.dec()
            self.in_flight += nbytes
            BODY_BYTES_IN_FLIGHT.inc(nbytes)
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= nbytes
                BODY_BYTES_IN_FLIGHT.dec(nbytes)
                self._changed.notify_all()


class _BodyTooLarge(Exception):
    """Raised by the wrapped ``receive`` when the bytes read pass the limit."""


class BodySizeLimit:
    """See the module docstring. ``budget_bytes`` 0 turns the budget off; ``wait_s`` is the
    longest wait for room in it."""

    def __init__(self, app: ASGIApp, max_bytes: int, budget_bytes: int = 0, wait_s: float = BUDGET_WAIT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget = BodyBudget(budget_bytes) if budget_bytes > 0 else None
        self.wait_s = wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _body_framing(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send, f"declares {declared} bytes")
            return
        size = self.max_bytes if chunked else (declared or 0)
        if self.budget is None or size <= SMALL_BODY_BYTES:
            await self._limited(scope, receive, send)
            return
        try:
            async with self.budget.reserve(size, self.wait_s):
                await self._limited(scope, receive, send)
        except ServerBusy as exc:
            await _answer(exc, scope, receive, send, close=False)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with ``receive`` counting and ``send`` swapping in the 413 when needed."""
        read = 0
        exceeded = answered = False
        raised: list[_BodyTooLarge] = []

        async def counting_receive() -> Message:
            nonlocal read, exceeded
            if not exceeded:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                read += len(message.get("body", b""))
                if read <= self.max_bytes:
                    return message
                exceeded = True
            raised.append(_BodyTooLarge())
            raise raised[-1]  # the app's body parser fails; its answer is replaced below

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if not exceeded:
                await send(message)
            elif message["type"] == "http.response.start" and not answered:
                answered = True
                await self._refuse(scope, receive, send, f"is more than {self.max_bytes} bytes")

        try:
            with suppress(_BodyTooLarge):  # an app that let it through: answered below
                await self.app(scope, counting_receive, guarded_send)
        finally:
            # The app wraps our exception in its own (FastAPI: a 400 "from" it), and those form
            # reference cycles that only the cyclic GC frees, sometimes much later. Our
            # exception's traceback holds the frames of the app's body reader, and with them
            # the up-to-the-limit bytes it had collected: dropping it frees them now.
            for exc in raised:
                exc.__traceback__ = None
        if exceeded and not answered:
            await self._refuse(scope, receive, send, f"is more than {self.max_bytes} bytes")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        exc = PayloadTooLarge(f"the request body {what}; the limit is {self.max_bytes} bytes", param="body")
        await _answer(exc, scope, receive, send, close=True)


async def _answer(exc: ServiceError, scope: Scope, receive: Receive, send: Send, *, close: bool) -> None:
    response = response_for(exc)
    if close:
        response.headers["Connection"] = "close"  # the rest of the body is never read
    await response(scope, receive, send)


def _body_framing(scope: Scope) -> tuple[int | None, bool]:
    """(declared ``Content-Length`` or None, whether the body is chunked)."""
    declared: int | None = None
    chunked = False
    for key, value in scope.get("headers", ()):
        name = key.lower()
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None  # the server already refuses a malformed one
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return declared, chunked and declared is None
