"""Every route x {no key, bad key, revoked key, wrong scope, right key}, over real HTTP.

The route table is read from the app, so a route added later without a row here fails
``test_every_route_is_in_the_matrix`` instead of silently shipping unauthenticated.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from fastapi.routing import APIRoute
from PIL import Image

from api.app import create_app
from api.routes.sdapi import NOTHING_HERE
from core.apikeys import KeyStore
from core.config import Settings
from core.jobs import connect
from core.models import queue_name
from tests.conftest import SettingsFactory
from tests.support.api_server import serve_app
from tests.support.keys import bearer


@dataclass(frozen=True)
class Row:
    method: str
    path: str  # with {job_id} / {key_id} placeholders
    scope: str
    ok: int


ROWS = [
    Row("POST", "/v1/images", "images:write", 202),
    Row("GET", "/v1/images", "images:read", 200),
    Row("GET", "/v1/images/{job_id}", "images:read", 200),
    Row("DELETE", "/v1/images/{job_id}", "images:write", 200),
    Row("GET", "/v1/images/{job_id}/events", "images:read", 200),
    Row("POST", "/v1/images/generations", "images:write", 504),  # served; no worker here, so it times out
    # multipart forms: the matrix sends JSON, so a served request is a 422 naming the body
    Row("POST", "/v1/images/edits", "images:write", 422),
    Row("POST", "/v1/images/variations", "images:write", 422),
    Row("GET", "/v1/webhooks/secret", "images:write", 200),
    Row("POST", "/v1/webhooks/secret", "images:write", 200),
    Row("GET", "/v1/models", "images:read", 200),
    Row("POST", "/v1/admin/keys", "admin", 201),
    Row("GET", "/v1/admin/keys", "admin", 200),
    Row("GET", "/v1/admin/keys/{key_id}", "admin", 200),
    Row("DELETE", "/v1/admin/keys/{key_id}", "admin", 200),
    Row("POST", "/sdapi/v1/txt2img", "images:write", 504),  # served; no worker here, so it times out
    Row("POST", "/sdapi/v1/img2img", "images:write", 504),
    Row("GET", "/sdapi/v1/options", "images:read", 200),
    Row("POST", "/sdapi/v1/options", "images:write", 200),
    Row("GET", "/sdapi/v1/sd-models", "images:read", 200),
    Row("GET", "/sdapi/v1/samplers", "images:read", 200),
    Row("GET", "/sdapi/v1/schedulers", "images:read", 200),
    Row("GET", "/sdapi/v1/scripts", "images:read", 200),
    Row("GET", "/sdapi/v1/loras", "images:read", 200),
    Row("GET", "/sdapi/v1/embeddings", "images:read", 200),
    Row("GET", "/sdapi/v1/progress", "images:read", 200),
    Row("POST", "/sdapi/v1/interrupt", "images:write", 200),
    Row("POST", "/sdapi/v1/skip", "images:write", 200),
    Row("POST", "/sdapi/v1/png-info", "images:read", 200),
    *(Row("GET", f"/sdapi/v1/{path}", "images:read", 200) for path in NOTHING_HERE),  # empty lists for menus
]
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/files/{key:path}"),
    # the browser playground's page and static files (the calls it makes carry the key)
    ("GET", "/"),
    ("GET", "/favicon.ico"),
    ("GET", "/playground/{name}"),
}


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


_PNG = _png_b64()
BODIES = {
    "/v1/images": {"prompt": "a fox", "steps": 2},
    "/v1/images/generations": {"prompt": "a fox", "steps": 2},
    "/v1/admin/keys": {"tenant": "new", "name": "n"},
    "/sdapi/v1/txt2img": {"prompt": "a fox", "steps": 2},
    "/sdapi/v1/img2img": {"prompt": "a fox", "steps": 2, "init_images": [_PNG]},
    "/sdapi/v1/options": {},
    "/sdapi/v1/png-info": {"image": _PNG},
}
#: A key with the wrong scope for each required scope.
WRONG = {"images:write": "reader", "images:read": "writer", "admin": "full"}
RIGHT = {"images:write": "writer", "images:read": "reader", "admin": "admin"}


@dataclass
class Matrix:
    client: httpx.Client
    settings: Settings
    tokens: dict[str, str]
    job_id: str
    target_key_id: str

    def call(self, row: Row, headers: dict[str, str]) -> httpx.Response:
        path = row.path.format(job_id=self.job_id, key_id=self.target_key_id)
        if path.endswith("/events"):  # a stream that lasts while the job is queued: the head is enough
            with self.client.stream(row.method, path, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                return response
        return self.client.request(row.method, path, json=BODIES.get(row.path), headers=headers)

    def queued(self) -> int:
        return int(redis.Redis.from_url(self.settings.redis_url).llen(f"rq:queue:{queue_name(self.settings, 'tiny')}"))


@pytest.fixture(scope="module")
def matrix(redis_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    settings = Settings(
        redis_url=redis_server.url,
        data_dir=tmp_path_factory.mktemp("matrix"),
        queue_prefix="auth-matrix",
        rate_limit_rps=0,
        openai_timeout_s=0.5,  # POST /v1/images/generations waits for a worker there is not
    )
    store = KeyStore(connect(settings), settings)
    tokens = {
        name: store.create("acme", name, scopes)[1]
        for name, scopes in {
            "full": ["images:read", "images:write"],
            "reader": ["images:read"],
            "writer": ["images:read", "images:write"],
            "admin": ["admin"],
            "revoked": ["images:read", "images:write", "admin"],
        }.items()
    }
    # The writer may read its own POST response, but for GET routes it must lack images:read.
    tokens["writer"] = store.create("acme", "writer-only", ["images:write"])[1]
    store.revoke(store.authenticate(tokens["revoked"]).id)
    target = store.create("acme", "target")[0]
    with serve_app(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
        job_id = client.post("/v1/images", json={"prompt": "x"}, headers=bearer(tokens["full"])).json()["id"]
        yield Matrix(client, settings, tokens, job_id, target.id)


def _unknown_key(tokens: dict[str, str]) -> str:
    return "sf_" + "f" * 16 + tokens["full"][19:]


def _wrong_secret(tokens: dict[str, str]) -> str:
    token = tokens["full"]
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


BAD_HEADERS = {
    "no key": lambda t: {},
    "empty bearer": lambda t: {"Authorization": "Bearer"},
    "malformed key": lambda t: {"Authorization": "Bearer not-a-key"},
    "unknown key": lambda t: bearer(_unknown_key(t)),
    "wrong secret": lambda t: bearer(_wrong_secret(t)),
    "basic auth": lambda t: {"Authorization": "Basic dXNlcjpwYXNz"},
    "revoked key": lambda t: bearer(t["revoked"]),
}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.method} {r.path}")
@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_missing_bad_and_revoked_keys_are_401(matrix: Matrix, row: Row, case: str) -> None:
    before = matrix.queued()
    resp = matrix.call(row, BAD_HEADERS[case](matrix.tokens))
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == "unauthorized"
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    assert ('error="invalid_token"' in challenge) == (case != "no key")
    if case == "revoked key":
        assert "revoked" in resp.json()["error"]["message"]
    assert matrix.queued() == before


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.method} {r.path}")
def test_a_key_without_the_scope_is_403(matrix: Matrix, row: Row) -> None:
    before = matrix.queued()
    resp = matrix.call(row, bearer(matrix.tokens[WRONG[row.scope]]))
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert error["code"] == "forbidden" and row.scope in error["message"]
    assert matrix.queued() == before


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.method} {r.path}")
def test_the_right_key_is_served(matrix: Matrix, row: Row) -> None:
    resp = matrix.call(row, bearer(matrix.tokens[RIGHT[row.scope]]))
    assert resp.status_code == row.ok, resp.text


def test_every_route_is_in_the_matrix(matrix: Matrix) -> None:
    app = create_app(matrix.settings)
    flat = []
    for route in app.routes:
        included = getattr(route, "original_router", None)  # FastAPI wraps included routers
        flat += included.routes if included is not None else [route]
    routes = {(m, r.path) for r in flat if isinstance(r, APIRoute) for m in r.methods}
    assert routes - PUBLIC == {(r.method, r.path) for r in ROWS}


def test_public_routes_need_no_key_and_unknown_paths_do(matrix: Matrix) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/", "/favicon.ico", "/playground/app.js"):
        assert matrix.client.get(path).status_code == 200, path
    # Signed file URLs: the signature is the credential, an API key is neither needed nor enough.
    forged = matrix.client.get(
        "/v1/files/acme/x/0.png",
        params={"expires": 9999999999, "signature": "0" * 64},
        headers=bearer(matrix.tokens["full"]),
    )
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "invalid_signature"
    assert matrix.client.get("/v1/nope").status_code == 401  # closed by default
    assert matrix.client.get("/v1/nope", headers=bearer(matrix.tokens["full"])).status_code == 404


def test_the_schema_declares_bearer_auth_on_every_protected_operation(matrix: Matrix) -> None:
    schema = matrix.client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for row in ROWS:
        operation = schema["paths"][row.path][row.method.lower()]
        assert operation["security"] == [{"HTTPBearer": []}], row
        assert {"401", "403", "429"} <= set(operation["responses"]), row


def test_with_auth_off_every_caller_is_the_default_tenant(make_settings: SettingsFactory) -> None:
    # No clean_redis here: a flush would wipe the module's keys; a prefix of its own instead.
    settings = make_settings(auth_enabled=False, queue_prefix="auth-off")
    with serve_app(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
        job = client.post("/v1/images", json={"prompt": "x"})
        assert job.status_code == 202
        assert client.get(f"/v1/images/{job.json()['id']}").status_code == 200
        assert client.get("/v1/admin/keys").status_code == 200
