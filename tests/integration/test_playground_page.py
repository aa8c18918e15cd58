"""The playground's page and static files in-process (TestClient, real Redis): public without a
key, only the listed files served, a strict CSP on them and the API's own CSP everywhere else,
and no inline script or style anywhere in the files (the CSP would block it)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.hardening import API_CSP, DOCS_CSP, playground_csp
from api.routes.playground import FILES, STATIC_DIR
from core.config import Settings
from tests.conftest import SettingsFactory
from tests.support.seaweed import SeaweedServer

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@pytest.fixture
def client(make_settings: SettingsFactory) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(auth_enabled=True))) as test_client:
        yield test_client


def test_the_page_is_served_at_the_root_without_a_key_with_the_strict_csp(client: TestClient) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.headers["content-security-policy"] == PAGE_CSP
    assert resp.headers["x-frame-options"] == "DENY" and resp.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/playground/app.js"></script>' in resp.text
    assert resp.headers["etag"] and resp.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_listed_file_is_served_with_its_type_and_the_page_csp(client: TestClient, name: str) -> None:
    resp = client.get(f"/playground/{name}")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == FILES[name]
    assert resp.headers["content-security-policy"] == PAGE_CSP
    assert resp.content == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize("path", ["/playground/nothing.js", "/playground/..%2Froutes%2Fplayground.py", "/playground/"])
def test_anything_else_under_the_prefix_is_a_json_404(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_the_favicon_is_the_svg(client: TestClient) -> None:
    resp = client.get("/favicon.ico")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/svg+xml"


def test_the_api_and_the_docs_keep_their_own_csp(client: TestClient) -> None:
    resp = client.get("/v1/models")  # no key: 401, with the API's headers
    assert resp.status_code == 401
    assert resp.headers["content-security-policy"] == API_CSP
    assert client.get("/healthz").headers["content-security-policy"] == API_CSP
    assert client.get("/docs").headers["content-security-policy"] == DOCS_CSP


def test_images_from_the_s3_endpoint_are_allowed(make_settings: SettingsFactory, seaweed: SeaweedServer) -> None:
    settings = make_settings(storage="s3", s3_bucket="b", s3_endpoint_url=f"{seaweed.endpoint_url}/")
    csp = playground_csp(settings)
    assert f"img-src 'self' data: blob: {seaweed.endpoint_url.rstrip('/')};" in csp
    with TestClient(create_app(settings)) as test_client:
        assert test_client.get("/").headers["content-security-policy"] == csp


def test_public_url_and_aws_hosts_are_image_origins() -> None:
    settings = Settings(storage="s3", s3_bucket="pics", s3_region="eu-west-1", public_url="https://sf.example.com/api")
    img_src = next(d for d in playground_csp(settings).split("; ") if d.startswith("img-src"))
    assert "https://pics.s3.eu-west-1.amazonaws.com" in img_src and "https://s3.eu-west-1.amazonaws.com" in img_src
    assert "https://sf.example.com" in img_src.split() and "/api" not in img_src


def test_the_files_on_disk_are_exactly_the_listed_ones() -> None:
    assert sorted(p.name for p in STATIC_DIR.iterdir()) == sorted(FILES)


def test_no_inline_script_style_or_handler_in_the_page() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all(re.search(r'\bsrc="/playground/[a-z]+\.js"', tag) for tag in scripts)
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handlers are blocked by the CSP"
    assert "http://" not in html and "https://" not in html, "no CDN or other origin"


def test_the_modules_import_only_served_files() -> None:
    for name in (n for n in FILES if n.endswith(".js")):
        source = (STATIC_DIR / name).read_text()
        for imported in re.findall(r'from "\./([^"]+)"', source):
            assert imported in FILES, f"{name} imports {imported}, which is not served"
        assert not re.search(r"localStorage\.[a-z]|document\.cookie", source), "the key stays in sessionStorage"
