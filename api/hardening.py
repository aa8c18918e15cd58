"""HTTP hardening as pure ASGI middleware: security headers, CORS, and the order of the
stack (the body limit and its budget are ``api/body_limit.py``).

Security headers are added outermost of all (:func:`install_security_headers`, after the
observability middleware), so every response carries them: ``/metrics``, which that middleware
answers itself, and the 401, 413 and 429 answers of the middlewares inside it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import AuthMiddleware
from api.body_limit import BodySizeLimit
from core.config import Settings

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
#: The browser playground (api/routes/playground.py): its page, its favicon and its static files.
PAGE_PATHS = frozenset({"/", "/favicon.ico"})
PAGE_PREFIX = "/playground/"


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of ``url``; None when it is not an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def image_origins(settings: Settings) -> list[str]:
    """Where the image URLs the API hands out point, besides the API itself: the S3 endpoint
    (presigned URLs), AWS's S3 hosts when no endpoint is set, and ``SFUMATO_PUBLIC_URL`` (the
    base of local-disk file URLs, when it is not the page's own origin)."""
    origins: list[str] = []
    if settings.storage_backend == "s3":
        if settings.s3_endpoint_url:
            origins.append(_origin(settings.s3_endpoint_url) or "")
        else:  # boto3's own AWS URLs: path style or virtual-hosted, global or regional
            region, bucket = settings.s3_region, settings.s3_bucket
            origins += ["https://s3.amazonaws.com", f"https://s3.{region}.amazonaws.com"]
            origins += [f"https://{bucket}.s3.amazonaws.com", f"https://{bucket}.s3.{region}.amazonaws.com"]
    if settings.public_url:
        origins.append(_origin(settings.public_url) or "")
    return sorted({o for o in origins if o})


def playground_csp(settings: Settings) -> str:
    """The page's policy: its own scripts and styles only (no inline code), images from itself,
    ``data:``/``blob:`` (previews) and the image store; it may only call its own API."""
    images = " ".join(["'self'", "data:", "blob:", *image_origins(settings)])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def csp_for(path: str, page_csp: str) -> str:
    """The CSP of a response to ``path``: the playground's, the docs' or the API's own."""
    if path in PAGE_PATHS or path.startswith(PAGE_PREFIX):
        return page_csp
    return DOCS_CSP if path in DOCS_PATHS else API_CSP


class SecurityHeaders:
    """Add the security headers every response should carry (a handler's own values win)."""

    def __init__(self, app: ASGIApp, hsts_max_age_s: int = 0, page_csp: str = API_CSP) -> None:
        self.app = app
        self.page_csp = page_csp
        self.hsts = f"max-age={hsts_max_age_s}; includeSubDomains" if hsts_max_age_s > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", csp_for(scope["path"], self.page_csp).encode()),
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
    """The stack inside observability, outermost first: CORS (when configured), authentication,
    body limit. Authentication comes before the body limit so an unauthenticated caller never
    gets its body read, nor a share of the body budget."""
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.resolved_max_body_bytes,
        budget_bytes=settings.resolved_max_body_bytes_in_flight,
    )
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


def install_security_headers(app: FastAPI, settings: Settings) -> None:
    """Add :class:`SecurityHeaders` outermost: call after every other ``add_middleware``."""
    app.add_middleware(SecurityHeaders, hsts_max_age_s=settings.hsts_max_age_s, page_csp=playground_csp(settings))
