"""The Sfumato client SDK (httpx and pydantic only; Pillow optional for ``to_pil``).

``Client`` / ``AsyncClient`` talk to a Sfumato API; ``sfumato.webhooks.verify`` checks signed
webhook deliveries; ``sfumato`` (the console script) is the CLI.
"""

from sfumato.aio import AsyncClient
from sfumato.client import Client
from sfumato.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    SfumatoError,
    WaitTimeoutError,
)
from sfumato.types import GeneratedImage, GenerationResult, Job, JobEvent, Model, Progress

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "GeneratedImage",
    "GenerationResult",
    "InvalidRequestError",
    "Job",
    "JobEvent",
    "JobFailedError",
    "Model",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "SfumatoError",
    "WaitTimeoutError",
    "__version__",
]
