"""FastAPI dependencies: the app's services and the calling principal, by scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.auth import require
from api.resources import ApiServices
from core.apikeys import ADMIN, IMAGES_READ, IMAGES_WRITE, Principal


def get_services(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


Services = Annotated[ApiServices, Depends(get_services)]
#: The authenticated caller, when its key holds the scope (401 / 403 otherwise).
Reader = Annotated[Principal, Depends(require(IMAGES_READ))]
Writer = Annotated[Principal, Depends(require(IMAGES_WRITE))]
Admin = Annotated[Principal, Depends(require(ADMIN))]
