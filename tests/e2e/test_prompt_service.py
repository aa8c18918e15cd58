"""Long prompts and A1111 attention syntax through the real service: uvicorn + a worker
process + a private Redis + SeaweedFS, tiny model, SFUMATO_MAX_PROMPT_CHUNKS=2."""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from tests.support.env import s3_env, service_env
from tests.support.one_worker_stack import one_worker_stack
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.timeout(600)

FILLER = " ".join(["the"] * 100)  # 100 tokens: the words after it are in the second chunk


@dataclass
class Stack:
    client: httpx.Client
    worker: ServiceProcess
    redis: redis.Redis
    queue_key: str

    def job(self, body: dict) -> dict:
        resp = self.client.post("/v1/images?wait=60", json={"steps": 4, "seed": 31, **body})
        assert resp.status_code in (200, 202), (resp.status_code, resp.text, self.worker.log_tail())
        job = resp.json()
        deadline = time.monotonic() + 300  # a busy CI machine: poll on until done, not a timing
        while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.5)  # poll interval only: the deadline above decides
            job = self.client.get(f"/v1/images/{job['id']}").json()
        return job

    def image(self, body: dict) -> Image.Image:
        job = self.job(body)
        assert job["status"] == "succeeded", (job, self.worker.log_tail())
        resp = httpx.get(job["images"][0]["url"], timeout=10)
        assert resp.status_code == 200
        return Image.open(io.BytesIO(resp.content))


@pytest.fixture(scope="module")
def stack(redis_server, seaweed, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e-prompts")
    env = {
        **service_env(redis_server.url, tmp, "e2e-prompts", SFUMATO_TORCH_THREADS="2", SFUMATO_MAX_PROMPT_CHUNKS="2"),
        **s3_env(seaweed, f"e2e-prompts-{secrets.token_hex(4)}"),
    }
    with one_worker_stack(env, redis_server.url, tmp / "logs") as running:
        yield Stack(running.client, running.worker, running.redis, running.queue_key)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_a_long_prompt_reads_its_second_chunk(stack: Stack) -> None:
    red = pixels(stack.image({"prompt": f"{FILLER} a red fox"}))
    blue = pixels(stack.image({"prompt": f"{FILLER} a blue fox"}))
    # Cut at 77 tokens (before chunking) the two were the same image; the tiny random model
    # responds weakly to any word, so "different" is the claim here (the shapes model's test in
    # tests/integration/test_prompt_weighting.py measures how much).
    assert not np.array_equal(red, blue)


def test_a_weight_of_one_is_the_plain_prompt_and_the_infotext_keeps_it_as_written(stack: Stack) -> None:
    plain = stack.image({"prompt": "a red fox"})
    weighted = stack.image({"prompt": "a (red:1.0) fox"})
    assert np.array_equal(pixels(plain), pixels(weighted))
    assert weighted.info["parameters"].splitlines()[0] == "a (red:1.0) fox"
    stronger = stack.image({"prompt": "a (red:1.6) fox"})
    assert not np.array_equal(pixels(plain), pixels(stronger))


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_malformed_weight_is_a_422_naming_the_field_and_nothing_is_enqueued(stack: Stack, field: str) -> None:
    queued = stack.redis.llen(stack.queue_key)
    body = {"prompt": "a fox", field: "a (red:abc) fox"}
    resp = stack.client.post("/v1/images", json=body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == field and "'abc'" in error["message"]
    assert stack.redis.llen(stack.queue_key) == queued


def test_chunk_limit_api_refuses_the_certain_and_the_worker_fails_the_exact(stack: Stack) -> None:
    resp = stack.client.post("/v1/images", json={"prompt": " ".join(["the"] * 160)})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == "prompt" and "3 chunks" in error["message"] and "maximum is 2" in error["message"]
    # "plain" is one word the API counts once but four tokens for the tiny tokenizer: 200 tokens.
    job = stack.job({"prompt": " ".join(["plain"] * 50)})
    assert job["status"] == "failed", job
    assert job["error"]["param"] == "prompt" and "maximum is 2" in job["error"]["message"], job
    assert stack.job({"prompt": f"{FILLER} a fox"})["status"] == "succeeded"  # two chunks: fine
