"""One spelling of ``param`` for every error about a list item, over real HTTP: the schema
errors pydantic raises and the range checks written by hand both say ``loras[0].scale`` and
``controlnet[0].image`` (list items in brackets, fields after dots), as the docs promise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.app import create_app
from api.errors import param_path
from core.config import Settings
from tests.conftest import SettingsFactory
from tests.support.api_server import serve_app
from tests.support.bodies import controlnet_registry
from tests.support.keys import bearer, create_key


@pytest.fixture
def settings(make_settings: SettingsFactory, clean_redis: redis.Redis, tmp_path: Path) -> Settings:
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "ink.safetensors").write_bytes(b"not read by the API")
    return make_settings(lora_dir=loras, models_file=controlnet_registry(tmp_path), rate_limit_rps=0)


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serve_app(create_app(settings)) as url, httpx.Client(base_url=url, timeout=20) as http:
        http.headers.update(bearer(create_key(settings)))
        yield http


def _param(client: httpx.Client, body: dict[str, Any], path: str = "/v1/images") -> str:
    resp = client.post(path, json={"prompt": "x", **body})
    assert resp.status_code == 422, resp.text
    return str(resp.json()["error"]["param"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # schema errors (pydantic's loc)
        ({"loras": [{"name": "ink", "scale": "strong"}]}, "loras[0].scale"),
        ({"loras": [{"name": "ink"}, {"name": ""}]}, "loras[1].name"),
        ({"controlnet": [{"name": "edges"}]}, "controlnet[0].image"),
        ({"controlnet": [{"name": "edges", "image": "x", "start": "soon"}]}, "controlnet[0].start"),
        # range checks (core/validation.py, core/controlnets.py)
        ({"loras": [{"name": "ink", "scale": 99}]}, "loras[0].scale"),
        ({"loras": [{"name": "ink"}, {"name": "nope"}]}, "loras[1].name"),
        ({"controlnet": [{"name": "edges", "image": "x", "scale": 5}]}, "controlnet[0].scale"),
        ({"controlnet": [{"name": "edges", "image": "x"}, {"name": "depth", "image": "%%"}]}, "controlnet[0].image"),
    ],
)
def test_schema_and_range_errors_spell_list_items_the_same(
    client: httpx.Client, body: dict[str, Any], param: str
) -> None:
    assert _param(client, body) == param


def test_the_openai_route_spells_them_the_same(client: httpx.Client) -> None:
    body = {"loras": [{"name": "ink", "scale": "strong"}]}
    assert _param(client, body, "/v1/images/generations") == "loras[0].scale"


def test_param_path() -> None:
    assert param_path(("controlnet", 0, "image")) == "controlnet[0].image"
    assert param_path(("loras", 1, "scale")) == "loras[1].scale"
    assert param_path(("refiner", "switch_at")) == "refiner.switch_at"
    assert param_path(()) is None
