"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routes import files, health, images, models
from api.services import ApiServices
from core.config import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build an app for ``settings`` (default: from the environment). No I/O until startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = ApiServices.build(settings or get_settings())
        app.state.services = services
        try:
            yield
        finally:
            services.close()

    app = FastAPI(
        title="Sfumato",
        version="0.1.0",
        summary="Self-hosted Stable Diffusion: a job API in front of batching GPU workers.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (images, models, files, health):
        app.include_router(module.router)
    return app
