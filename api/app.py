"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.hardening import install_middleware, install_security_headers
from api.job_reaper import job_reaper
from api.metrics import install_observability
from api.resources import ApiServices
from api.routes import (
    admin_keys,
    events,
    files,
    health,
    images,
    models,
    openai_images,
    playground,
    sdapi,
    webhooks,
)
from api.startup import announce_auth_mode, check_models, seed_keys_from_file
from api.webhook_sender import webhook_sender
from core.config import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build an app for ``settings`` (default: from the environment). No I/O until startup."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = ApiServices.build(settings)
        app.state.services = services
        announce_auth_mode(settings)
        check_models(settings)
        seed_keys_from_file(services)
        try:
            # api/webhook_sender.py: deliveries of ended jobs; api/job_reaper.py: dead workers' jobs
            async with webhook_sender(services), job_reaper(services):
                yield
        finally:
            services.close()
            await services.waiter.aclose()
            await services.events.aclose()

    docs = settings.docs_enabled
    app = FastAPI(
        title="Sfumato",
        version="0.1.0",
        summary="Self-hosted Stable Diffusion: a job API in front of batching GPU workers.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    install_error_handlers(app)
    install_middleware(app, settings)  # body limit, authentication, CORS
    install_observability(app, settings)  # metrics, request ids, access log, /metrics
    install_security_headers(app, settings)  # outermost: on every response, /metrics included
    for module in (openai_images, images, events, webhooks, models, admin_keys, files, health, sdapi, playground):
        app.include_router(module.router)
    return app
