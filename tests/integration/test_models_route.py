"""GET /v1/models over real HTTP: a model with a small vocabulary tells the client its words."""

from __future__ import annotations

import httpx

from api.app import create_app
from core.prompt_guide import SHAPES_PROMPT_GUIDE
from tests.support.api_server import serve_app
from tests.support.keys import bearer, create_key


def test_shapes_model_lists_its_vocabulary_and_an_example(make_settings, clean_redis) -> None:
    settings = make_settings(model="shapes")
    with (
        serve_app(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=10, headers=bearer(create_key(settings))) as client,
    ):
        resp = client.get("/v1/models")
    assert resp.status_code == 200, resp.text
    (shapes,) = resp.json()["data"]
    guide = shapes["prompt_guide"]
    assert shapes["id"] == "shapes"
    assert guide == SHAPES_PROMPT_GUIDE.public()
    assert set(guide) >= {"colours", "shapes", "sizes", "positions", "phrasings", "examples"}
    assert "red" in guide["colours"] and "circle" in guide["shapes"] and "large" in guide["sizes"]
    assert "center" in guide["positions"]
    assert any("background" in example for example in guide["examples"])


def test_a_model_without_a_vocabulary_has_no_guide(make_settings, clean_redis) -> None:
    settings = make_settings()  # tiny: any prompt
    with (
        serve_app(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=10, headers=bearer(create_key(settings))) as client,
    ):
        (tiny,) = client.get("/v1/models").json()["data"]
    assert tiny["id"] == "tiny" and "prompt_guide" not in tiny
