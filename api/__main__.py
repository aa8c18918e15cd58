"""``sfumato-api`` / ``python -m api``: serve the API with uvicorn."""

from __future__ import annotations

from core.script_extras import require_extra

require_extra("sfumato-api", "api", ("fastapi", "uvicorn"))  # before the imports that need it

from api.serving import serve
from core.config import get_settings
from core.logs import configure_logging


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "api")
    serve(settings)  # api/serving.py: uvicorn, one process or SFUMATO_API_WORKERS with merged metrics


if __name__ == "__main__":
    main()
