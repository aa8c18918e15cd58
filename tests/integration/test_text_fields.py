"""Every text field the API accepts is checked for text the worker cannot encode (a lone UTF-16
surrogate, NUL; control characters in names): a 422 naming the field, nothing enqueued.

Before this check, ``"negative_prompt": "\\ud800"`` was accepted (202) and then failed on the
worker's tokenizer together with every job batched with it (issue 18, defect 1).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from api.app import create_app
from core.config import Settings
from core.models import queue_name
from tests.conftest import SettingsFactory
from tests.support.api_server import serve_app
from tests.support.keys import bearer, create_key

SURROGATE = "\\ud800"  # as JSON text: decodes to a lone surrogate
NUL = "\\u0000"


@pytest.fixture
def settings(make_settings: SettingsFactory, clean_redis: redis.Redis) -> Settings:
    return make_settings(rate_limit_rps=0, queue_without_workers=True)


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    headers = {**bearer(create_key(settings)), "content-type": "application/json"}
    with serve_app(create_app(settings)) as url, httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        yield http


def _queued(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.redis_url).llen(f"rq:queue:{queue_name(settings, 'tiny')}"))


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _body(template: str, bad: str) -> bytes:
    """A JSON body with ``bad`` (JSON escape text) spliced in raw: json.dumps would not write it."""
    return template.replace("BAD", bad).encode()


#: (path, JSON body with BAD where the bad text goes, the param the 422 must name)
CASES: list[tuple[str, str, str]] = [
    ("/v1/images", '{"prompt": "a BAD b"}', "prompt"),
    ("/v1/images", '{"prompt": "a fox", "negative_prompt": "BAD"}', "negative_prompt"),
    ("/v1/images", '{"prompt": "a fox", "model": "tinyBAD"}', "model"),
    ("/v1/images", '{"prompt": "a fox", "scheduler": "ddimBAD"}', "scheduler"),
    ("/v1/images", '{"prompt": "a fox", "loras": [{"name": "xBAD"}]}', "loras[0].name"),
    ("/v1/images", '{"prompt": "a fox", "controlnet": [{"name": "xBAD", "image": "IMG"}]}', "controlnet[0].name"),
    ("/v1/images", '{"prompt": "a fox", "webhook_url": "https://example.com/BAD"}', "webhook_url"),
    ("/v1/images/generations", '{"prompt": "a BAD"}', "prompt"),
    ("/v1/images/generations", '{"prompt": "a fox", "user": "BAD"}', "user"),
    ("/v1/images/generations", '{"prompt": "a fox", "model": "BAD"}', "model"),
    ("/v1/images/generations", '{"prompt": "a fox", "negative_prompt": "BAD"}', "negative_prompt"),
]


@pytest.mark.parametrize("bad", [SURROGATE, NUL], ids=["surrogate", "nul"])
@pytest.mark.parametrize(("path", "template", "param"), CASES, ids=[f"{p}:{f}" for p, _, f in CASES])
def test_unencodable_text_is_a_422_naming_the_field(
    settings: Settings, client: httpx.Client, path: str, template: str, param: str, bad: str
) -> None:
    body = _body(template.replace("IMG", _png_b64()), bad)
    resp = client.post(path, content=body)
    assert resp.status_code == 422, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == param, error
    assert ("surrogate" if bad == SURROGATE else "NUL") in error["message"], error
    assert _queued(settings) == 0


def test_control_characters_are_refused_in_names_but_not_in_prompts(settings: Settings, client: httpx.Client) -> None:
    resp = client.post("/v1/images", content=b'{"prompt": "a fox", "model": "tiny\\u0007"}')
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "model", resp.text
    # A tab, a newline or a bell in a prompt encode fine (the tokenizer reads them as whitespace
    # or bytes), and a real astral character is no surrogate: all accepted.
    resp = client.post("/v1/images", content='{"prompt": "a\\tfox\\n\\u0007 \\ud83e\\udd8a 🦊"}'.encode())
    assert resp.status_code == 202, resp.text
    assert _queued(settings) == 1
