"""HTTP hardening as pure ASGI middleware: the body size limit, security headers, CORS, and
the order of the whole middleware stack.

Pure ASGI (not ``BaseHTTPMiddleware``) so the body limit sees the raw byte stream: a request
declaring a larger ``Content-Length`` is answered 413 before a byte is read, and a chunked one
is cut off as soon as the bytes counted pass the limit. The app only ever sees a complete body
within the limit, so nothing downstream (JSON parsing, base64 decoding) runs on an oversized one.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import AuthMiddleware
from api.errors import response_for
from core.config import Settings
from core.errors import PayloadTooLarge

#: For JSON and images: nothing may load, nothing may frame us.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
#: For Swagger UI / ReDoc, which load their bundles from jsDelivr and run an inline bootstrap.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "connect-src 'self'; worker-src blob:; frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})


class BodySizeLimit:
    """413 for a body above ``max_bytes``, checked before the app reads (and so parses) it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send, f"declares {declared} bytes")
            return
        # Read the whole body first (the app would buffer it anyway), counting as it streams in.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                chunks.clear()
                await self._refuse(scope, receive, send, f"is more than {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        chunks.clear()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: waits for http.disconnect

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        exc = PayloadTooLarge(f"the request body {what}; the limit is {self.max_bytes} bytes", param="body")
        response = response_for(exc)
        response.headers["Connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server already refuses a malformed one
    return None


class SecurityHeaders:
    """Add the security headers every response should carry (a handler's own values win)."""

    def __init__(self, app: ASGIApp, hsts_max_age_s: int = 0) -> None:
        self.app = app
        self.hsts = f"max-age={hsts_max_age_s}; includeSubDomains" if hsts_max_age_s > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", (DOCS_CSP if scope["path"] in DOCS_PATHS else API_CSP).encode()),
            (b"cache-control", b"no-store"),  # job views carry capability URLs
        ]
        if self.hsts:
            extra.append((b"strict-transport-security", self.hsts.encode()))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """The middleware stack, outermost first: security headers, CORS (when configured),
    authentication, body limit. Authentication comes before the body limit so an
    unauthenticated caller never gets its body buffered."""
    app.add_middleware(BodySizeLimit, max_bytes=settings.resolved_max_body_bytes)
    app.add_middleware(AuthMiddleware)
    origins = settings.cors_origins
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Prefer"],
            expose_headers=["Location", "Retry-After"],
            allow_credentials=False,  # bearer keys, never cookies
            max_age=600,
        )
    app.add_middleware(SecurityHeaders, hsts_max_age_s=settings.hsts_max_age_s)
