"""End to end: uvicorn + a real worker process + a private Redis + SeaweedFS (S3 with signatures).

A client POSTs, polls or waits, GETs the presigned URL and decodes the PNG, exactly as a user
would. A second stack on local-disk storage checks the API's signed file URLs.
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devstack.net import free_port
from tests.support.env import s3_env, service_env
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_for_workers, wait_until

pytestmark = pytest.mark.timeout(600)


@dataclass
class Stack:
    base_url: str
    client: httpx.Client
    api: ServiceProcess
    worker: ServiceProcess

    def generate(self, body: dict, wait: float = 120) -> dict:
        resp = self.client.post(f"/v1/images?wait={wait}", json=body)
        assert resp.status_code == 200, (resp.status_code, resp.text, self.worker.log_tail())
        return resp.json()


def _start_stack(env: dict[str, str], log_dir: Path) -> Iterator[Stack]:
    port = free_port()
    worker = start_worker(env, log_dir)
    api = start_api(env, port, log_dir)
    base_url = f"http://127.0.0.1:{port}"
    headers = bearer(env_key(env, tenant="default"))
    try:
        wait_for_workers(base_url, 1, 240, worker, api, headers=headers)
        with httpx.Client(base_url=base_url, timeout=150, headers=headers) as client:
            yield Stack(base_url, client, api, worker)
    finally:
        worker.stop()
        api.stop()


def _base_env(redis_server, tmp: Path) -> dict[str, str]:
    return service_env(redis_server.url, tmp, "e2e", SFUMATO_TORCH_THREADS="2")


@pytest.fixture(scope="module")
def s3_stack(redis_server, seaweed, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e-s3")
    env = {**_base_env(redis_server, tmp), **s3_env(seaweed, f"e2e-{secrets.token_hex(4)}")}
    yield from _start_stack(env, tmp / "logs")


@pytest.fixture(scope="module")
def local_stack(redis_server, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e-local")
    yield from _start_stack({**_base_env(redis_server, tmp), "SFUMATO_STORAGE": "local"}, tmp / "logs")


def _fetch_png(url: str) -> Image.Image:
    resp = httpx.get(url, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(resp.content))
    image.load()
    return image


def test_txt2img_round_trip_through_s3(s3_stack: Stack) -> None:
    job = s3_stack.generate({"prompt": "a red fox in the snow", "negative_prompt": "blurry", "seed": 7, "steps": 8})
    assert job["status"] == "succeeded"
    (image_info,) = job["images"]
    assert (image_info["seed"], image_info["width"], image_info["height"], image_info["format"]) == (7, 64, 64, "png")
    assert "X-Amz-Signature" in image_info["url"]
    timings = job["timings"]
    assert timings["inference_s"] > 0 and timings["total_s"] >= timings["inference_s"]
    assert timings["queue_wait_s"] >= 0
    image = _fetch_png(image_info["url"])
    assert image.size == (64, 64)
    params = image.text["parameters"]
    assert params.startswith("a red fox in the snow\nNegative prompt: blurry\n")
    for fragment in ("Steps: 8", "Seed: 7", "Size: 64x64", "Model: tiny", job["id"]):
        assert fragment in params
    polled = s3_stack.client.get(f"/v1/images/{job['id']}").json()
    assert polled["status"] == "succeeded" and polled["finished_at"] >= polled["started_at"]


def test_same_request_gives_the_same_pixels_and_seeds_count_up(s3_stack: Stack) -> None:
    body = {"prompt": "a lighthouse at dusk", "seed": 123, "steps": 6, "n": 2}
    first, second = s3_stack.generate(body), s3_stack.generate(body)
    assert [img["seed"] for img in first["images"]] == [123, 124]
    pixels = [[np.asarray(_fetch_png(img["url"])) for img in job["images"]] for job in (first, second)]
    assert np.array_equal(pixels[0][0], pixels[1][0]) and np.array_equal(pixels[0][1], pixels[1][1])
    assert not np.array_equal(pixels[0][0], pixels[0][1])


def test_polling_shows_queued_or_running_then_succeeded(s3_stack: Stack) -> None:
    resp = s3_stack.client.post("/v1/images", json={"prompt": "x", "steps": 4, "output_format": "webp"})
    assert resp.status_code == 202
    location = resp.headers["location"]
    seen: list[str] = []

    def done() -> bool:
        seen.append(s3_stack.client.get(location).json()["status"])
        return seen[-1] in ("succeeded", "failed")

    wait_until(done, 120, "the job to finish", s3_stack.worker)
    assert seen[-1] == "succeeded" and set(seen) <= {"queued", "running", "succeeded"}
    image_url = s3_stack.client.get(location).json()["images"][0]["url"]
    fetched = httpx.get(image_url, timeout=10)
    assert fetched.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(fetched.content)).format == "WEBP"


def test_a_job_that_fails_records_a_reason_and_the_worker_goes_on(s3_stack: Stack) -> None:
    # A PNG whose header is valid (so the API accepts it) but whose pixel data is cut short:
    # decoding fails inside the worker, as a broken upload would.
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="PNG")
    truncated = base64.b64encode(buf.getvalue()[:200]).decode()
    failed = s3_stack.generate({"prompt": "x", "image": truncated, "strength": 0.5, "steps": 4})
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "generation_failed"
    assert "Traceback" not in failed["error"]["message"] and failed["images"] == []
    assert s3_stack.generate({"prompt": "still alive", "steps": 4})["status"] == "succeeded"
    assert s3_stack.worker.alive()


def test_img2img_and_inpainting_through_the_service(s3_stack: Stack) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (96, 80), (10, 120, 200)).save(buf, format="JPEG")
    init = base64.b64encode(buf.getvalue()).decode()
    mask_buf = io.BytesIO()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(mask_buf, format="PNG")
    img2img = s3_stack.generate({"prompt": "a blue pond", "image": init, "strength": 0.5, "steps": 6})
    inpaint = s3_stack.generate(
        {"prompt": "a frog", "image": init, "mask": base64.b64encode(mask_buf.getvalue()).decode(), "steps": 6}
    )
    for job, mode in ((img2img, "img2img"), (inpaint, "inpaint")):
        assert job["status"] == "succeeded" and job["mode"] == mode
        assert _fetch_png(job["images"][0]["url"]).size == (64, 64)
        assert "Denoising strength" in _fetch_png(job["images"][0]["url"]).text["parameters"]


def test_models_reports_the_live_worker(s3_stack: Stack) -> None:
    (model,) = s3_stack.client.get("/v1/models").json()["data"]
    assert model["id"] == "tiny" and model["workers"] == 1


def test_local_disk_store_serves_signed_urls_and_refuses_forged_ones(local_stack: Stack) -> None:
    job = local_stack.generate({"prompt": "a red fox", "seed": 1, "steps": 4})
    url = job["images"][0]["url"]
    assert url.startswith(local_stack.base_url + "/v1/files/default/")
    assert _fetch_png(url).size == (64, 64)
    forged = url.replace("signature=", "signature=0")
    resp = httpx.get(forged, timeout=10)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "invalid_signature"
    expired = url.split("?")[0] + "?expires=1&signature=" + url.split("signature=")[1]
    assert httpx.get(expired, timeout=10).status_code == 403


def test_cancelling_a_finished_job_is_a_409(local_stack: Stack) -> None:
    done = local_stack.generate({"prompt": "x", "steps": 2})
    resp = local_stack.client.delete(f"/v1/images/{done['id']}")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "conflict"
