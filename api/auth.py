"""Who is calling: API-key authentication (ASGI middleware) and scope checks (dependencies).

Authentication runs as middleware, before the app reads a byte of the body: a caller without
a valid key is answered 401 without its (possibly large) body ever being buffered. The
middleware also takes the key's request token (429 when the bucket is empty) and leaves the
:class:`~core.apikeys.Principal` in the request state. Routes then ask for a scope with
:func:`require` (403 when the key lacks it). The key comes as ``Authorization: Bearer <key>``,
or as the password of HTTP Basic (any user name), which is all AUTOMATIC1111 clients can send.

Open without a key: the probes, the API docs and schema (they hold no secrets), the
signed local-file URLs (the signature is the capability) and the playground's static page
(it holds no secrets; the calls it makes carry the key the user types). Everything else, including unknown
paths, needs a key, so a route added later is closed by default.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import response_for
from api.resources import ApiServices
from core.apikeys import Principal, anonymous_principal
from core.errors import Forbidden, ServiceError, Unauthorized

PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/", "/favicon.ico"}
)
#: Signed file URLs, and the browser playground's static files (the page asks for the key itself).
PUBLIC_PREFIXES = ("/v1/files/", "/playground/")
STATE_KEY = "principal"

#: Declares the scheme in the OpenAPI schema (Swagger's "Authorize" button). The check itself
#: is the middleware's; this never rejects anything.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer sf_<id>_<secret>`.")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def bearer_token(authorization: str | None) -> str:
    """The API key of an ``Authorization`` header; :class:`Unauthorized` otherwise.

    ``Bearer <key>`` is the API's own scheme. ``Basic`` (base64 of ``user:key``, any user) is
    accepted too, with the key as the password: AUTOMATIC1111 clients only know HTTP Basic
    (A1111's ``--api-auth``), and they must reach ``/sdapi/v1`` with a Sfumato key unchanged."""
    if not authorization:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "basic" and token.strip():
        return _basic_password(token.strip())
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "the Authorization header must be 'Bearer <key>' (or HTTP Basic with the key as the password)",
            token_presented=True,
        )
    return token.strip()


def _basic_password(credentials: str) -> str:
    """The password of HTTP Basic ``credentials`` (RFC 7617: base64 of ``user:password``)."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Unauthorized("the Basic credentials are not valid base64 of 'user:key'", token_presented=True) from None
    _user, colon, password = decoded.partition(":")
    if not colon or not password:
        raise Unauthorized("HTTP Basic needs the API key as the password ('user:key')", token_presented=True)
    return password


def authenticate(services: ApiServices, authorization: str | None) -> Principal:
    """The caller behind ``authorization``, with one request token taken (blocking: Redis)."""
    settings = services.settings
    if settings.auth_enabled:
        key = services.keys.authenticate(bearer_token(authorization))
        principal = Principal.of(key, settings)
    else:
        principal = anonymous_principal(settings)
    services.quotas.check_request(principal)
    return principal


class AuthMiddleware:
    """Authenticate every non-public HTTP request before the app sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        services: ApiServices = scope["app"].state.services
        authorization = _header(scope, b"authorization")
        try:
            principal = await run_in_threadpool(authenticate, services, authorization)
        except ServiceError as exc:
            response = response_for(exc)
            if _header(scope, b"content-length") not in (None, "0") or _header(scope, b"transfer-encoding"):
                response.headers["Connection"] = "close"  # its body is never read
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = principal
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def principal_of(request: Request) -> Principal:
    """The principal the middleware stored; a route outside its reach is a server bug."""
    principal = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(principal, Principal):
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    return principal


def require(scope_name: str) -> Callable[..., Principal]:
    """A dependency: the caller's principal, if its key holds ``scope_name`` (else 403)."""

    def dependency(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> Principal:
        principal = principal_of(request)
        if scope_name not in principal.scopes:
            raise Forbidden(f"this API key lacks the scope {scope_name!r}", param="scope")
        return principal

    dependency.__name__ = f"require_{scope_name.replace(':', '_')}"
    return dependency
