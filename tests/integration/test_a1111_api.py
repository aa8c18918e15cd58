"""``/sdapi/v1`` over real HTTP against a private Redis, with no worker running.

What the API decides alone: refusals (422 naming the A1111 field, nothing enqueued), options
per API key, HTTP Basic auth, the caller's current job (progress while queued, interrupt),
the 504 when nothing answers in time, png-info, and the route label in the metrics. The
images themselves are tests/e2e/test_a1111_service.py's job.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from PIL import Image, PngImagePlugin

from api.app import create_app
from api.routes.sdapi import NOTHING_HERE
from core.config import Settings
from core.models import queue_name
from core.schemas import JobPayload, OutputFormat
from tests.support.api_server import serve_app
from tests.support.keys import bearer, create_key
from tests.support.processes import wait_until
from worker.runtime.encoding import encode_image


@dataclass
class Api:
    client: httpx.Client
    settings: Settings
    token: str

    def queued(self) -> int:
        return int(redis.Redis.from_url(self.settings.redis_url).llen(f"rq:queue:{queue_name(self.settings, 'tiny')}"))


@pytest.fixture
def api(make_settings, clean_redis) -> Iterator[Api]:
    settings = make_settings(rate_limit_rps=0, openai_timeout_s=30, queue_without_workers=True)
    token = create_key(settings, tenant="acme")
    with (
        serve_app(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=60, headers=bearer(token)) as client,
    ):
        yield Api(client, settings, token)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _png_b64(text: str | None = None) -> str:
    buf = io.BytesIO()
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        info.add_text("Software", "test")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "enable_hr": True}, "enable_hr"),
        ({"prompt": "x", "restore_faces": True}, "restore_faces"),
        ({"prompt": "x", "script_name": "x/y/z plot"}, "script_name"),
        ({"prompt": "x", "no_such_field": 1}, "no_such_field"),
        ({"prompt": "x", "width": 500}, "width"),
        ({"prompt": "x", "cfg_scale": 1000}, "cfg_scale"),
        ({"prompt": "x", "batch_size": 50}, "batch_size"),
        ({"prompt": "x", "sampler_name": "Euler a", "scheduler": "Karras"}, "scheduler"),
        ({"prompt": "x\ud800"}, "prompt"),
        ({"prompt": "x <lora:nope:0.5>"}, "prompt"),
        ({"prompt": "x", "alwayson_scripts": {"roop": {"args": [True]}}}, "alwayson_scripts.roop"),
    ],
)
def test_refusals_are_422_naming_the_a1111_field_and_enqueue_nothing(api: Api, body: dict, param: str) -> None:
    # json.dumps escapes a lone surrogate as "\\ud800", as a client's JSON would carry it.
    headers = {"Content-Type": "application/json"}
    resp = api.client.post("/sdapi/v1/txt2img", content=json.dumps(body), headers=headers)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["param"] == param, resp.text
    assert api.queued() == 0


def test_img2img_refusals_name_the_a1111_field(api: Api) -> None:
    cases = [
        ({"prompt": "x"}, "init_images"),
        ({"prompt": "x", "init_images": ["not base64!"]}, "init_images"),
        ({"prompt": "x", "init_images": [_png_b64()], "denoising_strength": 1.5}, "denoising_strength"),
        ({"prompt": "x", "init_images": [_png_b64()], "inpainting_mask_invert": 1}, "inpainting_mask_invert"),
    ]
    for body, param in cases:
        resp = api.client.post("/sdapi/v1/img2img", json=body)
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["param"] == param, resp.text
    assert api.queued() == 0


def test_options_are_per_key_and_checked(api: Api) -> None:
    other = httpx.Client(base_url=str(api.client.base_url), headers=bearer(create_key(api.settings, tenant="acme")))
    with other:
        assert api.client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
        resp = api.client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "tiny"})
        assert resp.status_code == 200, resp.text
        assert api.client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        assert other.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1  # never global
        # A client's read-modify-write posts the read-only facts back unchanged: accepted.
        assert api.client.post("/sdapi/v1/options", json=api.client.get("/sdapi/v1/options").json()).status_code == 200
        for body, param in (
            ({"sd_model_checkpoint": "v1-5-pruned.safetensors [6ce0161689]"}, "sd_model_checkpoint"),
            ({"CLIP_stop_at_last_layers": 0}, "CLIP_stop_at_last_layers"),
            ({"samples_format": "jpg"}, "samples_format"),
            ({"sd_vae": "Automatic", "no_such_option": 1}, "no_such_option"),
        ):
            resp = api.client.post("/sdapi/v1/options", json=body)
            assert resp.status_code == 422 and resp.json()["error"]["param"] == param, resp.text
        assert api.client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2


def test_lists_answer_in_a1111_shapes(api: Api) -> None:
    models = api.client.get("/sdapi/v1/sd-models").json()
    assert [m["title"] for m in models] == ["tiny"] and {"model_name", "hash", "filename"} <= set(models[0])
    samplers = {s["name"]: s for s in api.client.get("/sdapi/v1/samplers").json()}
    assert {"Euler a", "DPM++ 2M", "DDIM"} <= set(samplers)
    assert samplers["DPM++ 2M"]["options"] == {"scheduler": "karras"}  # its default schedule, as A1111 1.9+
    assert [s["name"] for s in api.client.get("/sdapi/v1/schedulers").json()] == ["automatic", "uniform", "karras"]
    assert api.client.get("/sdapi/v1/loras").json() == []
    assert api.client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert api.client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    for path in NOTHING_HERE:  # menus clients fill: empty, not a 404
        assert api.client.get(f"/sdapi/v1/{path}").json() == [], path
    assert api.client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == models[0]["title"]
    idle = api.client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None


def test_http_basic_with_the_key_as_password_authenticates(api: Api) -> None:
    anonymous = httpx.Client(base_url=str(api.client.base_url), timeout=10)
    with anonymous:
        assert anonymous.get("/sdapi/v1/options", headers=_basic("anyone", api.token)).status_code == 200
        for headers in (_basic("anyone", "wrong"), _basic(api.token, ""), {"Authorization": "Basic !!"}, {}):
            resp = anonymous.get("/sdapi/v1/options", headers=headers)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized", headers
        # Basic works on every route, not only /sdapi.
        assert anonymous.get("/v1/models", headers=_basic("", api.token)).status_code == 200


def test_basic_auth_with_keys_off_is_open(make_settings, clean_redis) -> None:
    settings = make_settings(auth_enabled=False)
    with serve_app(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
        assert client.get("/sdapi/v1/options").status_code == 200
        assert client.get("/sdapi/v1/options", headers=_basic("user", "anything")).status_code == 200


def _wait_for(predicate, what: str) -> None:
    wait_until(predicate, 60.0, what, interval_s=0.05)


def test_progress_shows_the_queued_job_and_interrupt_cancels_it(api: Api) -> None:
    answer: dict[str, httpx.Response] = {}
    call = threading.Thread(
        target=lambda: answer.update(resp=api.client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "steps": 2}))
    )
    call.start()
    _wait_for(lambda: api.client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 1, "the job to show")
    progress = api.client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0 and progress["textinfo"].startswith("Waiting in queue: 0 job(s) ahead")
    assert progress["state"]["sampling_steps"] == 2
    # Another key of the same tenant has no current job: the current job is per key.
    other = bearer(create_key(api.settings, tenant="acme"))
    assert api.client.get("/sdapi/v1/progress", headers=other).json()["state"]["job_count"] == 0
    assert api.client.post("/sdapi/v1/interrupt", headers=other).status_code == 200
    assert api.queued() == 1
    assert api.client.post("/sdapi/v1/interrupt").status_code == 200
    call.join(timeout=60)
    assert answer["resp"].status_code == 409, answer["resp"].text
    assert answer["resp"].json()["error"]["code"] == "conflict"
    assert api.queued() == 0
    assert api.client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    assert api.client.post("/sdapi/v1/skip").status_code == 200  # nothing current: nothing happens


def test_no_answer_in_time_is_a_504_and_the_job_is_canceled(make_settings, clean_redis) -> None:
    settings = make_settings(rate_limit_rps=0, openai_timeout_s=0.5, queue_without_workers=True)
    with (
        serve_app(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=30, headers=bearer(create_key(settings))) as client,
    ):
        resp = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "steps": 2})
        assert resp.status_code == 504, resp.text
        assert resp.json()["error"]["code"] == "timeout"
        assert redis.Redis.from_url(settings.redis_url).llen(f"rq:queue:{queue_name(settings, 'tiny')}") == 0
        assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
        metrics = client.get("/metrics").text
        assert 'route="/sdapi/v1/txt2img"' in metrics and 'status="504"' in metrics


def test_png_info_reads_and_parses_the_infotext(api: Api) -> None:
    text = (
        'a fox, "quoted"\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 42, '
        'Size: 64x48, Model: tiny, Lora hashes: "a: 1, b: 2", Clip skip: 2'
    )
    resp = api.client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + _png_b64(text)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["info"] == text
    assert body["items"] == {"Software": "test"}
    params = body["parameters"]
    assert params["Prompt"] == 'a fox, "quoted"' and params["Negative prompt"] == "blurry"
    assert (params["Steps"], params["Sampler"], params["Seed"]) == ("4", "Euler a", "42")
    assert (params["Size-1"], params["Size-2"], params["Lora hashes"], params["Clip skip"]) == (
        "64",
        "48",
        "a: 1, b: 2",
        "2",
    )
    empty = api.client.post("/sdapi/v1/png-info", json={"image": _png_b64()}).json()
    assert empty == {"info": "", "items": {}, "parameters": {}}
    bad = api.client.post("/sdapi/v1/png-info", json={"image": "aGVsbG8="})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "image"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_png_info_reads_what_the_worker_writes(api: Api, fmt: OutputFormat) -> None:
    payload = JobPayload(
        job_id="0" * 32, tenant="acme", model="tiny", mode="txt2img", prompt="a fox", negative_prompt="rain",
        width=32, height=32, steps=3, guidance_scale=6.5, scheduler="dpmpp_2m_karras", seed=9, n=1, clip_skip=1,
        output_format=fmt, created_at=0.0,
    )  # fmt: skip
    data = encode_image(Image.new("RGB", (32, 32)), payload, 0, 9, "tiny")
    body = api.client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(data).decode()}).json()
    params = body["parameters"]
    assert params["Prompt"] == "a fox" and params["Negative prompt"] == "rain"
    assert (params["Sampler"], params["CFG scale"], params["Seed"], params["Clip skip"]) == (
        "DPM++ 2M Karras",
        "6.5",
        "9",
        "2",
    )
    assert params["Sfumato job"] == "0" * 32
