"""FastAPI dependencies: the app's services and the calling tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.services import ApiServices

DEFAULT_TENANT = "default"


def get_services(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


def get_tenant() -> str:
    """The tenant of the caller. Until API keys land every caller is the default tenant."""
    return DEFAULT_TENANT


Services = Annotated[ApiServices, Depends(get_services)]
Tenant = Annotated[str, Depends(get_tenant)]
