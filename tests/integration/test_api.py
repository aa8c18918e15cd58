"""The API over real HTTP against a private Redis, with no worker running.

What is checked here is everything the API decides by itself: validation (422 naming the
field and the limit, nothing enqueued), job reads and cancellation, waiting, the error shape,
and 503 + Retry-After when Redis is gone.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
import redis
from PIL import Image

from api.app import create_app
from core.config import Settings
from core.models import queue_name
from devstack.net import free_port
from tests.support.api_server import serve_app
from tests.support.keys import bearer, create_key


@pytest.fixture
def api_settings(make_settings, clean_redis) -> Settings:
    return make_settings()


@pytest.fixture
def api(api_settings: Settings) -> Iterator[httpx.Client]:
    headers = bearer(create_key(api_settings))
    with (
        serve_app(create_app(api_settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=10, headers=headers) as client,
    ):
        yield client


def _queue_len(settings: Settings) -> int:
    conn = redis.Redis.from_url(settings.redis_url)
    return int(conn.llen(f"rq:queue:{queue_name(settings, 'tiny')}"))


def _png_b64(width: int = 64, height: int = 64) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_submit_returns_202_with_location_and_enqueues(api: httpx.Client, api_settings: Settings) -> None:
    resp = api.post("/v1/images", json={"prompt": "a red fox in the snow", "seed": 7})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "queued"
    assert resp.headers["location"] == f"/v1/images/{body['id']}"
    assert len(body["id"]) == 32  # 128 random bits
    assert (body["model"], body["mode"], body["n"]) == ("tiny", "txt2img", 1)
    assert _queue_len(api_settings) == 1
    got = api.get(resp.headers["location"])
    assert got.status_code == 200 and got.json()["status"] == "queued"


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"prompt": "x", "width": 65}, "width", "multiple of 8"),
        ({"prompt": "x", "width": 512}, "width", "maximum is 256"),
        ({"prompt": "x", "steps": 1000}, "steps", "maximum is 100"),
        ({"prompt": "x", "n": 9}, "n", "maximum is 8"),
        ({"prompt": "x", "guidance_scale": 99}, "guidance_scale", "0.0..30.0"),
        ({"prompt": "x", "seed": -1}, "seed", "-1"),
        ({"prompt": "x", "seed": 2**32}, "seed", "4294967295"),
        ({"prompt": ""}, "prompt", "at least 1"),
        ({"prompt": "x" * 2001}, "prompt", "maximum is 2000"),
        ({"prompt": "x", "scheduler": "warp_drive"}, "scheduler", "dpmpp_2m_karras"),
        ({"prompt": "x", "model": "sdxl-unknown"}, "model", "valid models: tiny"),
        ({"prompt": "x", "sampler": "ddim"}, "sampler", "Extra inputs"),
        ({"prompt": "x", "output_format": "gif"}, "output_format", "png"),
        ({"prompt": "x", "strength": 0.5}, "strength", "only with an image"),
        ({"prompt": "x", "image": "not base64!!"}, "image", "base64"),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_nothing_is_enqueued(
    api: httpx.Client, api_settings: Settings, body: dict, param: str, fragment: str
) -> None:
    resp = api.post("/v1/images", json=body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == param
    assert error["code"] in ("invalid_request", "unknown_choice")
    assert fragment in error["message"]
    assert "Traceback" not in resp.text
    assert _queue_len(api_settings) == 0


def test_img2img_upload_is_accepted_and_oversized_declared_dimensions_are_not(
    api: httpx.Client, api_settings: Settings
) -> None:
    ok = api.post("/v1/images", json={"prompt": "x", "image": _png_b64(), "strength": 0.6})
    assert ok.status_code == 202 and ok.json()["mode"] == "img2img"
    big = api.post("/v1/images", json={"prompt": "x", "image": _png_b64(4200, 4200)})
    assert big.status_code == 422
    assert big.json()["error"]["param"] == "image" and "limit is 16777216" in big.json()["error"]["message"]
    assert _queue_len(api_settings) == 1


def test_unknown_job_is_a_404_json_error(api: httpx.Client) -> None:
    resp = api.get("/v1/images/" + "0" * 32)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_cancel_a_queued_job_removes_it(api: httpx.Client, api_settings: Settings) -> None:
    job_id = api.post("/v1/images", json={"prompt": "x"}).json()["id"]
    resp = api.delete(f"/v1/images/{job_id}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "canceled"
    assert _queue_len(api_settings) == 0
    assert api.get(f"/v1/images/{job_id}").json()["status"] == "canceled"
    assert api.delete(f"/v1/images/{job_id}").json()["status"] == "canceled"


def test_wait_without_a_worker_answers_202_when_the_wait_runs_out(api: httpx.Client) -> None:
    resp = api.post("/v1/images?wait=0.3", json={"prompt": "x"})
    assert resp.status_code == 202
    assert resp.json()["status"] == "queued"
    prefer = api.post("/v1/images", json={"prompt": "x"}, headers={"Prefer": "respond-async, wait=0.2"})
    assert prefer.status_code == 202


def test_models_lists_the_tiny_model_with_defaults_and_no_workers(api: httpx.Client) -> None:
    body = api.get("/v1/models").json()
    (tiny,) = body["data"]
    assert tiny["id"] == "tiny"
    assert (tiny["default_width"], tiny["default_steps"], tiny["workers"]) == (64, 20, 0)
    assert "source" not in tiny
    assert body["schedulers"]["dpmpp_2m_karras"] == "DPM++ 2M Karras"


def test_probes_and_docs(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    schema = api.get("/openapi.json").json()
    assert "/v1/images" in schema["paths"] and "/v1/images/{job_id}" in schema["paths"]
    assert api.get("/docs").status_code == 200


def test_redis_down_is_a_503_with_retry_after_not_a_hang(make_settings) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    # A well-formed key: checking it needs Redis, so the answer is 503, not 401 (fail closed).
    headers = bearer("sf_0123456789abcdef_" + "A" * 43)
    with (
        serve_app(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=10, headers=headers) as client,
    ):
        for method, path, body in [
            ("POST", "/v1/images", {"prompt": "x"}),
            ("GET", "/v1/images/" + "0" * 32, None),
            ("GET", "/readyz", None),
            ("GET", "/v1/models", None),
        ]:
            resp = client.request(method, path, json=body)
            assert resp.status_code == 503, (path, resp.text)
            assert resp.headers["retry-after"] == "2"
            assert resp.json()["error"]["code"] == "queue_unavailable"
        assert client.get("/healthz").status_code == 200
