"""HTTP metrics, request ids, access logs and ``GET /metrics`` for the API: one ASGI middleware.

It sits outside every other middleware but the security headers (``api/app.py`` adds it after
the others, then ``SecurityHeaders`` around it), so it sees every request, including those that
authentication, the body limit or the rate limits answer before any route runs, and it serves
``/metrics`` itself, ahead of authentication: Prometheus scrapes without an API key. Its answer
still carries the security headers, like every other response. The metrics hold no secrets
and no per-request labels; expose the port to your scraper only, or turn them off with
``SFUMATO_METRICS_ENABLED=false``.

Per request:

- ``X-Request-ID``: the client's (if short and plain) or a new one; echoed on the response, set
  in a context variable for every log line of the request and stored in the meta of the job it
  submits (``core/jobs.py``), so the worker logs it too;
- ``sfumato_http_requests_total{method,route,status}`` and
  ``sfumato_http_request_duration_seconds{method,route}``, where ``route`` is the route's
  template (``/v1/images/{job_id}``), ``unmatched`` for unknown paths;
- one access-log line (path without the query string, which may carry a URL signature).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.routing import Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import Settings
from core.logs import REQUEST_ID, accept_request_id
from core.metrics import HTTP_BUCKETS, render
from core.queue_metrics import QueueCollector

log = logging.getLogger("sfumato.api.access")

METRICS_PATH = "/metrics"
#: Requests logged at DEBUG: scrapers and probes would drown everything else.
QUIET_PATHS = frozenset({METRICS_PATH, "/healthz", "/readyz"})
_METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "sfumato_http_requests_total",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "sfumato_http_request_duration_seconds",
    "Seconds from the request's arrival until its response was sent (a ?wait= request includes the wait).",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "sfumato_http_requests_in_flight", "HTTP requests being answered now.", multiprocess_mode="livesum"
)
BODY_BYTES_IN_FLIGHT = Gauge(
    "sfumato_http_body_bytes_in_flight",
    "Request body bytes reserved from the body budget (SFUMATO_MAX_BODY_BYTES_IN_FLIGHT) now.",
    multiprocess_mode="livesum",
)
BODIES_WAITING = Gauge(
    "sfumato_http_bodies_waiting",
    "Requests whose body waits for room in the body budget before it is read.",
    multiprocess_mode="livesum",
)


def route_template(scope: Scope, templates: RouteTemplates) -> str:
    """The template of the route that served (or would have served) the request."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if template:
        return str(template)
    # Answered before routing (authentication, limits): the template the router would pick.
    return templates.match(scope["path"]) or "unmatched"


class RouteTemplates:
    """Every route's template with its regex, in the router's order, for requests answered
    before routing. Built on first use (routes are all added by then)."""

    def __init__(self) -> None:
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def match(self, path: str) -> str | None:
        for regex, template in self._compiled or ():
            if regex.match(path):
                return template
        return None

    def build(self, app: Any) -> None:
        if self._compiled is None:
            self._compiled = [compile_path(path)[0:2] for path in _paths(getattr(app, "routes", ()))]


def _paths(routes: Any, prefix: str = "") -> Iterator[str]:
    """Route paths, descending into included routers and mounts (FastAPI keeps included
    routers as objects with their own ``routes``)."""
    for route in routes:
        path = getattr(route, "path", None)
        included = getattr(route, "original_router", None)
        if included is not None:
            include_prefix = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            yield from _paths(included.routes, prefix + include_prefix)
        elif isinstance(route, Mount):
            yield from _paths(getattr(route.app, "routes", ()), prefix + route.path)
        elif isinstance(path, str):
            yield prefix + path


class ObservabilityMiddleware:
    """See the module docstring. ``settings`` decides whether ``/metrics`` is served."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._queue_collector: QueueCollector | None = None
        self._templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accept_request_id(_header(scope, b"x-request-id"))
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises: ServerErrorMiddleware answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            if scope["path"] == METRICS_PATH and self.settings.metrics_enabled:
                await self._serve_metrics(scope, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            HTTP_IN_FLIGHT.dec()
            self._observe(scope, status, time.perf_counter() - started)
        # Reset only on a normal return: after an exception, the error handler outside this
        # middleware logs it, and should still see the request id (the context dies with the
        # request's task either way).
        REQUEST_ID.reset(token)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "other"
        if scope["path"] == METRICS_PATH:
            route = METRICS_PATH
        else:
            self._templates.build(scope.get("app"))
            route = route_template(scope, self._templates)
        HTTP_REQUESTS.labels(method, route, str(status)).inc()
        HTTP_DURATION.labels(method, route).observe(seconds)
        level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
        if log.isEnabledFor(level):
            fields = {"event": "http_request", "method": method, "path": scope["path"], "route": route}
            fields.update(status=status, duration_ms=round(seconds * 1000, 2))
            log.log(level, "%s %s %d %.1fms", method, scope["path"], status, seconds * 1000, extra=fields)

    async def _serve_metrics(self, scope: Scope, send: Send) -> None:
        if scope["method"] != "GET":
            await _respond(send, 405, b"GET only\n", "text/plain; charset=utf-8")
            return
        body = await run_in_threadpool(render, self._collectors(scope))
        await _respond(send, 200, body, CONTENT_TYPE_LATEST)

    def _collectors(self, scope: Scope) -> list[Any]:
        """The scrape-time queue collector, on the app's Redis connection once it exists."""
        if self._queue_collector is None:
            services = getattr(scope["app"].state, "services", None)
            if services is None:  # before start-up completed
                return []
            self._queue_collector = QueueCollector(services.jobs.connection, self.settings)
        return [self._queue_collector]


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Add the middleware outside the others: call after ``install_middleware`` (and before
    ``install_security_headers``, which wraps it)."""
    app.add_middleware(ObservabilityMiddleware, settings=settings)
