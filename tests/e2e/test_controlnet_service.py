"""ControlNet per request through the real service: uvicorn + a worker process + a private
Redis + local-disk images, with a tiny ControlNet (made in the test, safetensors) named in the
model registry file (SFUMATO_MODELS_FILE) that both processes read."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from tests.support.bombs import b64 as raw_b64
from tests.support.bombs import png_header_only
from tests.support.controlnet import b64, edge_map, make_controlnet, shapes_image
from tests.support.env import NO_LIMITS, service_env
from tests.support.one_worker_stack import one_worker_stack
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.timeout(600)

NAME = "edges"


@dataclass
class ControlNetStack:
    client: httpx.Client
    worker: ServiceProcess
    redis: redis.Redis
    queue_key: str

    def generate(self, body: dict) -> dict:
        resp = self.client.post("/v1/images?wait=120", json=body)
        assert resp.status_code == 200, (resp.status_code, resp.text, self.worker.log_tail())
        job = resp.json()
        assert job["status"] == "succeeded", (job, self.worker.log_tail())
        return job


def registry(folder: Path, controlnet: Path) -> Path:
    path = folder / "models.toml"
    path.write_text(
        "[[models]]\n"
        'id = "tiny"\nsource = "tiny"\nfamily = "tiny"\ndefault_steps = 4\n'
        "[[models.controlnets]]\n"
        f'name = "{NAME}"\nsource = "{controlnet}"\npreprocess = "canny"\n'
    )
    return path


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory) -> Iterator[ControlNetStack]:
    tmp = tmp_path_factory.mktemp("e2e-controlnet")
    make_controlnet(tmp / "controlnets" / NAME, seed=1)
    env = {
        **service_env(redis_server.url, tmp, "e2e-controlnet", SFUMATO_TORCH_THREADS="1", **NO_LIMITS),
        "SFUMATO_MODELS_FILE": str(registry(tmp, tmp / "controlnets" / NAME)),
        "SFUMATO_MAX_UPLOAD_PIXELS": str(512 * 512),
    }
    with one_worker_stack(env, redis_server.url, tmp / "logs") as running:
        yield ControlNetStack(running.client, running.worker, running.redis, running.queue_key)


def _pixels(job: dict) -> np.ndarray:
    resp = httpx.get(job["images"][0]["url"], timeout=10)
    assert resp.status_code == 200
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"), dtype=np.int16)


def test_models_list_the_controlnets_without_paths(stack: ControlNetStack) -> None:
    resp = stack.client.get("/v1/models")
    (model,) = resp.json()["data"]
    assert model["controlnets"] == [{"name": NAME, "preprocess": "canny"}]
    limits = resp.json()["limits"]
    assert limits["max_controlnets"] == 2 and limits["controlnet_scale"] == [0.0, 2.0]
    assert "controlnets/" not in resp.text


def test_a_controlnet_request_changes_the_image_deterministically(stack: ControlNetStack) -> None:
    request = {"prompt": "a house by a lake", "seed": 21}
    photo = b64(shapes_image((96, 96)))
    before = _pixels(stack.generate(request))
    unit = {"name": NAME, "image": photo, "scale": 1.0, "start": 0.0, "end": 1.0}  # canny: the registry default
    controlled = _pixels(stack.generate({**request, "controlnet": [unit]}))
    assert int(np.abs(controlled - before).max()) > 2
    assert np.array_equal(_pixels(stack.generate({**request, "controlnet": [unit]})), controlled)
    other_map = {**unit, "image": b64(edge_map(4)), "preprocess": "none"}
    assert int(np.abs(_pixels(stack.generate({**request, "controlnet": [other_map]})) - controlled).max()) > 2
    # Scale 0 is normalised away: the plain image; and nothing stays attached on the worker.
    assert np.array_equal(_pixels(stack.generate({**request, "controlnet": [{**unit, "scale": 0}]})), before)
    assert np.array_equal(_pixels(stack.generate(request)), before)


@pytest.mark.parametrize(
    ("unit", "param", "code", "words"),
    [
        ({"name": "pose"}, "controlnet[0].name", "unknown_choice", NAME),
        ({"image": "bm90IGFuIGltYWdl"}, "controlnet[0].image", None, "PNG, JPEG, WebP"),
        ({"image": raw_b64(png_header_only(4000, 4000))}, "controlnet[0].image", None, "262144"),
        ({"start": 0.6, "end": 0.4}, "controlnet[0].start", None, "must be below"),
        ({"scale": 3}, "controlnet[0].scale", None, "0.0..2.0"),
    ],
)
def test_bad_controlnet_input_is_a_422_naming_the_field_and_nothing_is_enqueued(
    stack: ControlNetStack, unit: dict, param: str, code: str | None, words: str
) -> None:
    queued = stack.redis.llen(stack.queue_key)
    jobs = len(stack.client.get("/v1/images").json()["data"])
    body = {"prompt": "x", "controlnet": [{"name": NAME, "image": b64(edge_map(1)), **unit}]}
    resp = stack.client.post("/v1/images", json=body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and words in error["message"]
    if code is not None:
        assert error["code"] == code
    assert stack.redis.llen(stack.queue_key) == queued
    assert len(stack.client.get("/v1/images").json()["data"]) == jobs  # no job was created either


def test_too_many_controlnets_is_a_422(stack: ControlNetStack) -> None:
    unit = {"name": NAME, "image": b64(edge_map(1))}
    resp = stack.client.post("/v1/images", json={"prompt": "x", "controlnet": [unit, unit, unit]})
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "controlnet" and "maximum is 2" in resp.json()["error"]["message"]
