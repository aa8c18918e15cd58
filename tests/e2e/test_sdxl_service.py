"""SDXL through the real service: uvicorn + two worker processes (the tiny SD model and the
tiny SDXL with its refiner, from one model registry file) + a private Redis + SeaweedFS.

Shows SD 1.x and SDXL workers coexisting (each request lands on its model's worker), SDXL
txt2img and the refiner handoff end to end (deterministic, and refined != plain), and a refiner
request for a model without one refused with a 422 naming the field, nothing enqueued."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from devstack.net import free_port
from tests.support.env import s3_env, service_env
from tests.support.keys import bearer, env_key
from tests.support.processes import ServiceProcess, start_api, start_worker, wait_for_workers

pytestmark = pytest.mark.timeout(600)

REGISTRY = """
[[models]]
id = "tiny"
source = "tiny"
family = "tiny"

[[models]]
id = "xl"
source = "tiny-sdxl"
family = "sdxl"
default_width = 64
default_height = 64
max_size = 256
default_steps = 8
default_scheduler = "ddim"
refiner = "tiny-sdxl-refiner"
"""


@dataclass
class SdxlStack:
    client: httpx.Client
    workers: dict[str, ServiceProcess]
    redis: redis.Redis
    queue_prefix: str

    def generate(self, body: dict) -> dict:
        resp = self.client.post("/v1/images?wait=150", json=body)
        logs = {name: worker.log_tail() for name, worker in self.workers.items()}
        assert resp.status_code == 200, (resp.status_code, resp.text, logs)
        job = resp.json()
        assert job["status"] == "succeeded", (job, logs)
        return job


@pytest.fixture(scope="module")
def stack(redis_server, seaweed, tmp_path_factory) -> Iterator[SdxlStack]:
    tmp = tmp_path_factory.mktemp("e2e-sdxl")
    (tmp / "models.toml").write_text(REGISTRY)
    env = {
        **service_env(redis_server.url, tmp, "e2e-sdxl", SFUMATO_TORCH_THREADS="1"),
        **s3_env(seaweed, f"e2e-sdxl-{secrets.token_hex(4)}"),
        "SFUMATO_MODELS_FILE": str(tmp / "models.toml"),
    }
    port = free_port()
    workers = {
        model: start_worker({**env, "SFUMATO_WORKER_MODEL": model}, tmp / "logs", name=f"worker-{model}")
        for model in ("tiny", "xl")
    }
    api = start_api(env, port, tmp / "logs")
    base_url = f"http://127.0.0.1:{port}"
    headers = bearer(env_key(env, tenant="default"))
    conn = redis.Redis.from_url(redis_server.url)
    try:
        wait_for_workers(base_url, 1, 300, *workers.values(), api, headers=headers)
        with httpx.Client(base_url=base_url, timeout=180, headers=headers) as client:
            yield SdxlStack(client, workers, conn, env["SFUMATO_QUEUE_PREFIX"])
    finally:
        conn.close()
        for worker in workers.values():
            worker.stop()
        api.stop()


def _pixels(job: dict) -> np.ndarray:
    resp = httpx.get(job["images"][0]["url"], timeout=10)
    assert resp.status_code == 200
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))


def test_models_show_the_sdxl_model_and_its_refiner(stack: SdxlStack) -> None:
    models = {m["id"]: m for m in stack.client.get("/v1/models").json()["data"]}
    assert models["xl"]["family"] == "sdxl" and models["xl"]["refiner"] is True
    assert models["tiny"]["family"] == "tiny" and models["tiny"]["refiner"] is False
    assert models["xl"]["workers"] == 1 and models["tiny"]["workers"] == 1


def test_sdxl_and_sd_requests_run_side_by_side_and_the_refiner_hands_off(stack: SdxlStack) -> None:
    request = {"model": "xl", "prompt": "a lighthouse at dusk", "seed": 21, "steps": 10}
    plain = stack.generate(request)
    sd = stack.generate({"prompt": "a lighthouse at dusk", "seed": 21, "steps": 4, "model": "tiny"})
    assert (plain["model"], sd["model"]) == ("xl", "tiny")
    assert plain["images"][0]["width"] == 64
    refined = stack.generate({**request, "refiner": {"switch_at": 0.8}})
    again = stack.generate({**request, "refiner": {"switch_at": 0.8}})
    plain_pixels, refined_pixels = _pixels(plain), _pixels(refined)
    assert np.array_equal(_pixels(again), refined_pixels)  # deterministic
    assert int(np.abs(refined_pixels.astype(int) - plain_pixels.astype(int)).max()) > 2
    assert np.array_equal(_pixels(stack.generate(request)), plain_pixels)  # the base is untouched
    assert not np.array_equal(_pixels(sd), plain_pixels)  # another model answered


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny", "refiner": {"switch_at": 0.8}}, "refiner"),  # an SD model has no refiner
        ({"model": "xl", "refiner": {"switch_at": 1.0}}, "refiner.switch_at"),
        ({"model": "xl", "refiner": {"switch_at": 0.9}, "steps": 5}, "refiner.switch_at"),
    ],
)
def test_a_bad_refiner_request_is_a_422_naming_the_field_and_nothing_is_enqueued(
    stack: SdxlStack, body: dict, param: str
) -> None:
    queues = [f"rq:queue:{stack.queue_prefix}:{model}" for model in ("tiny", "xl")]
    queued = [stack.redis.llen(queue) for queue in queues]
    jobs = len(stack.client.get("/v1/images").json()["data"])
    resp = stack.client.post("/v1/images", json={"prompt": "x", **body})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["param"] == param
    assert [stack.redis.llen(queue) for queue in queues] == queued
    assert len(stack.client.get("/v1/images").json()["data"]) == jobs
