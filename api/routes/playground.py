"""The browser playground: ``GET /`` serves its page, ``/playground/<file>`` its static files.

The files live in ``api/playground/`` (plain HTML, CSS and ES modules: no build step) and ship
inside the ``api`` package. Only the files named in :data:`FILES` are served, so no request path
ever reaches the file system. The page holds no secrets: it is public (api/auth.py), and the
calls it makes to ``/v1`` carry the key the user types. Its strict CSP (its own scripts and
styles only, images from the image store) is set in api/hardening.py.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

STATIC_DIR = Path(__file__).resolve().parent.parent / "playground"

#: Every file the playground serves, with its media type.
FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "form.js": "text/javascript; charset=utf-8",
    "snippets.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

#: Revalidate on every load (the ETag makes that cheap), so an upgraded server is never
#: paired with a stale script.
_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> FileResponse:
    media_type = FILES.get(name)
    if media_type is None:
        raise HTTPException(404, "Not Found")  # the one JSON 404 of api/errors.py
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_CACHE)


@router.get("/")
def playground_page() -> FileResponse:
    """The playground page."""
    return _file("index.html")


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    """Browsers ask for it unprompted; an SVG answers (every current browser draws it)."""
    return _file("favicon.svg")


@router.get("/playground/{name}")
def playground_file(name: str) -> FileResponse:
    """One of the page's static files (404 for any other name)."""
    return _file(name)
