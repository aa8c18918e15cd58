"""LoRA per request through the real service: uvicorn + a worker process + a private Redis +
SeaweedFS, with a LoRA made by peft in a folder both processes read (SFUMATO_LORA_DIR)."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image
from safetensors.torch import save_file

from tests.support.env import s3_env, service_env
from tests.support.kohya import to_kohya
from tests.support.lora import make_lora
from tests.support.one_worker_stack import one_worker_stack
from tests.support.processes import ServiceProcess
from worker.builtin.tiny import build_tiny_pipeline

pytestmark = pytest.mark.timeout(600)

LORA = "ink-wash"
KOHYA = "ink-wash-kohya"  # the same LoRA in the kohya / A1111 layout (lora_unet_*, lora_te_*, alphas)


EMBEDDING = "ink-style"  # a file in the default embeddings folder, data_dir/embeddings/<model>


def _embedding_like_a_word(path: Path, word: str) -> None:
    """An embedding whose vector is the tiny text encoder's own vector for the one-token
    ``word``: a prompt with the embedding's token must then draw exactly what ``word`` draws."""
    pipe = build_tiny_pipeline()
    (token_id,) = pipe.tokenizer(word, add_special_tokens=False).input_ids
    vector = pipe.text_encoder.get_input_embeddings().weight[token_id].detach().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vector[None]}, str(path))  # the A1111 layout


@dataclass
class LoraStack:
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


@pytest.fixture(scope="module")
def stack(redis_server, seaweed, tmp_path_factory) -> Iterator[LoraStack]:
    tmp = tmp_path_factory.mktemp("e2e-lora")
    source = make_lora(tmp / "loras", LORA, seed=3, text_encoder=True)
    to_kohya(source, tmp / "loras" / f"{KOHYA}.safetensors", alpha=2.0)
    _embedding_like_a_word(tmp / "data" / "embeddings" / "tiny" / f"{EMBEDDING}.safetensors", "x")
    env = {
        **service_env(redis_server.url, tmp, "e2e-lora", SFUMATO_TORCH_THREADS="2"),
        **s3_env(seaweed, f"e2e-lora-{secrets.token_hex(4)}"),
        "SFUMATO_LORA_DIR": str(tmp / "loras"),
    }
    with one_worker_stack(env, redis_server.url, tmp / "logs") as running:
        yield LoraStack(running.client, running.worker, running.redis, running.queue_key)


def _png(job: dict) -> Image.Image:
    resp = httpx.get(job["images"][0]["url"], timeout=10)
    assert resp.status_code == 200
    return Image.open(io.BytesIO(resp.content))


def _pixels(job: dict) -> np.ndarray:
    return np.asarray(_png(job).convert("RGB"))


def test_models_list_the_loras_and_their_limits(stack: LoraStack) -> None:
    body = stack.client.get("/v1/models").json()
    (model,) = body["data"]
    assert model["loras"] == sorted([LORA, KOHYA])
    assert body["limits"]["max_loras"] == 4 and body["limits"]["lora_scale"] == [-2.0, 2.0]


def test_a_lora_request_changes_the_image_and_the_base_model_is_unchanged_after(stack: LoraStack) -> None:
    request = {"prompt": "a lighthouse at dusk", "seed": 21, "steps": 6}
    before = _pixels(stack.generate(request))
    styled = stack.generate({**request, "loras": [{"name": LORA, "scale": 0.9}]})
    after = _pixels(stack.generate(request))
    assert np.array_equal(before, after)  # nothing left active on the worker
    styled_pixels = _pixels(styled)
    assert int(np.abs(styled_pixels.astype(int) - before.astype(int)).max()) > 2
    again = stack.generate({**request, "loras": [{"name": LORA, "scale": 0.9}]})
    assert np.array_equal(_pixels(again), styled_pixels)
    # Scale 0 is normalised away: the base image, and the same batch key as plain requests.
    assert np.array_equal(_pixels(stack.generate({**request, "loras": [{"name": LORA, "scale": 0}]})), before)


def test_an_unknown_lora_is_a_422_listing_the_valid_ones_and_nothing_is_enqueued(stack: LoraStack) -> None:
    queued = stack.redis.llen(stack.queue_key)
    jobs = len(stack.client.get("/v1/images").json()["data"])
    resp = stack.client.post("/v1/images", json={"prompt": "x", "loras": [{"name": "no-such-lora", "scale": 1}]})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["code"] == "unknown_choice" and error["param"] == "loras[0].name"
    assert LORA in error["message"] and "no-such-lora" in error["message"]
    assert stack.redis.llen(stack.queue_key) == queued
    assert len(stack.client.get("/v1/images").json()["data"]) == jobs  # no job was created either


def test_a_lora_tag_in_the_prompt_is_the_loras_field_and_the_infotext_keeps_it(stack: LoraStack) -> None:
    request = {"seed": 22, "steps": 6}
    field = stack.generate({**request, "prompt": "a lighthouse , at dusk", "loras": [{"name": LORA, "scale": 0.9}]})
    written = f"a lighthouse <lora:{LORA}:0.9>, at dusk"
    tagged = stack.generate({**request, "prompt": written})
    assert np.array_equal(_pixels(tagged), _pixels(field))  # same LoRA, same text after the cut
    plain = stack.generate({**request, "prompt": "a lighthouse , at dusk"})
    assert not np.array_equal(_pixels(plain), _pixels(field))
    infotext = _png(tagged).text["parameters"]  # type: ignore[attr-defined]
    assert infotext.splitlines()[0] == written  # the prompt as written, the tag where it was
    resp = stack.client.post("/v1/images", json={"prompt": "x <lora:no-such-lora:0.5>"})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "prompt"


def test_a_kohya_lora_gives_the_image_of_its_diffusers_source(stack: LoraStack) -> None:
    request = {"prompt": "a lighthouse at dusk", "seed": 23, "steps": 6}
    diffusers = _pixels(stack.generate({**request, "loras": [{"name": LORA, "scale": 0.7}]}))
    kohya = _pixels(stack.generate({**request, "prompt": f"a lighthouse at dusk<lora:{KOHYA}:0.7>"}))
    # alpha / rank = 0.5 in the kohya file, compensated in its up matrices: the same delta.
    assert int(np.abs(kohya.astype(int) - diffusers.astype(int)).max()) <= 1
    assert not np.array_equal(kohya, _pixels(stack.generate(request)))


def test_a_file_in_the_embeddings_folder_is_a_prompt_token_named_after_it(stack: LoraStack) -> None:
    request = {"seed": 24, "steps": 6}
    with_token = _pixels(stack.generate({**request, "prompt": f"a lighthouse {EMBEDDING}"}))
    assert np.array_equal(with_token, _pixels(stack.generate({**request, "prompt": "a lighthouse x"})))
    assert not np.array_equal(with_token, _pixels(stack.generate({**request, "prompt": "a lighthouse"})))
