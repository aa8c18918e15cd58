"""The A1111-compatible API through the real service, driven by the real A1111 client.

uvicorn + one worker process + a private Redis + SeaweedFS, tiny model, API keys on. The
client is ``webuiapi`` from PyPI, unchanged, authenticating with HTTP Basic (the API key as
the password), exactly as it talks to AUTOMATIC1111 started with ``--api-auth``.
"""

from __future__ import annotations

import base64
import io
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.support.controlnet import make_controlnet, shapes_image
from tests.support.env import s3_env, service_env
from tests.support.keys import env_key
from tests.support.lora import make_lora
from tests.support.one_worker_stack import one_worker_stack
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.timeout(600)

LORA = "ink-wash"
CONTROLNET = "edges"
SIZE = {"width": 64, "height": 64}


@dataclass
class Stack:
    client: httpx.Client  # Bearer, for the native API
    worker: ServiceProcess
    base_url: str
    key: str  # a second key of the default tenant, used through HTTP Basic

    def webui(self) -> webuiapi.WebUIApi:
        return webuiapi.WebUIApi(baseurl=f"{self.base_url}/sdapi/v1", username="a1111-client", password=self.key)


@pytest.fixture(scope="module")
def stack(redis_server, seaweed, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e-a1111")
    make_lora(tmp / "loras", LORA, seed=3)
    make_controlnet(tmp / "controlnets" / CONTROLNET, seed=1)
    models = tmp / "models.toml"
    models.write_text(
        '[[models]]\nid = "tiny"\nsource = "tiny"\nfamily = "tiny"\n[[models.controlnets]]\n'
        f'name = "{CONTROLNET}"\nsource = "{tmp / "controlnets" / CONTROLNET}"\npreprocess = "none"\n'
    )
    env = {
        **service_env(redis_server.url, tmp, "e2e-a1111", SFUMATO_TORCH_THREADS="2", SFUMATO_PREVIEW_INTERVAL_S="0"),
        **s3_env(seaweed, f"e2e-a1111-{secrets.token_hex(4)}"),
        "SFUMATO_LORA_DIR": str(tmp / "loras"),
        "SFUMATO_MODELS_FILE": str(models),
        "SFUMATO_OPENAI_TIMEOUT_S": "240",
    }
    with one_worker_stack(env, redis_server.url, tmp / "logs") as running:
        key = env_key(env, tenant="default")
        yield Stack(running.client, running.worker, str(running.client.base_url).rstrip("/"), key)


def _ok(stack: Stack, result: Any) -> Any:
    assert result.images, (result.json, stack.worker.log_tail())
    return result


def test_txt2img_with_the_real_client(stack: Stack) -> None:
    api = stack.webui()
    result = _ok(
        stack,
        api.txt2img(
            prompt=f"a red fox <lora:{LORA}:0.8>",
            negative_prompt="blurry",
            seed=5,
            batch_size=2,
            steps=3,
            cfg_scale=5,
            sampler_name="DPM++ 2M",
            scheduler="Karras",
            **SIZE,
        ),
    )
    assert len(result.images) == 2 and all(image.size == (64, 64) for image in result.images)
    info = result.info  # webuiapi json.loads the info string, as it does for A1111
    assert info["all_seeds"] == [5, 6] and info["seed"] == 5
    assert info["sampler_name"] == "DPM++ 2M Karras" and info["sd_model_name"] == "tiny"
    assert info["prompt"] == f"a red fox <lora:{LORA}:0.8>" and info["negative_prompt"] == "blurry"
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (64, 64, 3, 5)
    for image, infotext in zip(result.images, info["infotexts"], strict=True):
        assert image.info["parameters"] == infotext  # the PNG carries the same infotext
    first = info["infotexts"][0]
    assert first.startswith(f"a red fox <lora:{LORA}:0.8>\nNegative prompt: blurry\n")
    assert "Sampler: DPM++ 2M Karras" in first and "Seed: 5" in first and "Lora hashes" in first
    assert result.parameters["prompt"] == f"a red fox <lora:{LORA}:0.8>"
    # The same job through the native API: the A1111 route is a front door, not another path.
    job = stack.client.get(f"/v1/images/{info['extra_generation_params']['Sfumato job']}").json()
    assert (job["status"], job["mode"], job["n"]) == ("succeeded", "txt2img", 2)
    # png-info reads it back.
    read = api.png_info(result.images[1])
    assert read.info == info["infotexts"][1]
    assert read.json["parameters"]["Seed"] == "6"


def test_img2img_and_inpainting_with_the_real_client(stack: Stack) -> None:
    api = stack.webui()
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    result = _ok(stack, api.img2img(images=[init], prompt="a fox", denoising_strength=0.6, seed=3, steps=4, **SIZE))
    assert result.images[0].size == (64, 64)
    assert result.info["denoising_strength"] == 0.6
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]
    assert result.parameters["init_images"] is None  # blanked in the echo, as A1111 does
    job_id = result.info["extra_generation_params"]["Sfumato job"]
    assert stack.client.get(f"/v1/images/{job_id}").json()["mode"] == "img2img"

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # white is repainted
    painted = _ok(
        stack,
        api.img2img(images=[init], mask_image=mask, prompt="a fox", denoising_strength=0.9, seed=3, steps=4, **SIZE),
    )
    job_id = painted.info["extra_generation_params"]["Sfumato job"]
    assert stack.client.get(f"/v1/images/{job_id}").json()["mode"] == "inpaint"
    assert not np.array_equal(np.asarray(painted.images[0]), np.asarray(result.images[0]))


def test_controlnet_units_of_the_real_client_steer_the_image(stack: Stack) -> None:
    api = stack.webui()
    plain = _ok(stack, api.txt2img(prompt="a house", seed=4, steps=3, **SIZE))
    unit = webuiapi.ControlNetUnit(image=shapes_image((64, 64)), module="canny", model=f"{CONTROLNET} [0a1b2c3d]")
    steered = _ok(stack, api.txt2img(prompt="a house", seed=4, steps=3, controlnet_units=[unit], **SIZE))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(steered.images[0]))
    assert f'ControlNet 0: "Module: canny, Model: {CONTROLNET}, Weight: 1' in steered.info["infotexts"][0]
    off = webuiapi.ControlNetUnit(image=shapes_image((64, 64)), model=CONTROLNET, enabled=False)
    same = _ok(stack, api.txt2img(prompt="a house", seed=4, steps=3, controlnet_units=[off], **SIZE))
    assert "ControlNet 0" not in same.info["infotexts"][0]


def test_options_round_trip_per_key(stack: Stack) -> None:
    api = stack.webui()
    assert api.util_get_current_model() == "tiny"
    assert api.util_get_model_names() == ["tiny"]
    api.util_set_model("tiny")
    api.set_options({"CLIP_stop_at_last_layers": 2})
    assert api.get_options()["CLIP_stop_at_last_layers"] == 2
    try:
        result = _ok(stack, api.txt2img(prompt="a fox", seed=1, steps=2, **SIZE))
        assert result.info["clip_skip"] == 2 and "Clip skip: 2" in result.info["infotexts"][0]
        # The stack's own key (the same tenant) keeps its own options.
        assert stack.client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1})
    assert {"Euler a", "DPM++ 2M"} <= set(api.util_get_sampler_names())
    assert [lora["name"] for lora in api.get_loras()] == [LORA]


def test_keys_on_a_client_without_credentials_is_refused(stack: Stack) -> None:
    resp = httpx.get(f"{stack.base_url}/sdapi/v1/options", timeout=10)
    assert resp.status_code == 401
    resp = httpx.get(f"{stack.base_url}/sdapi/v1/options", auth=("anyone", stack.key), timeout=10)
    assert resp.status_code == 200


def test_progress_shows_previews_and_interrupt_stops_the_running_job(stack: Stack) -> None:
    api = stack.webui()
    outcome: dict[str, Any] = {}

    def generate() -> None:
        try:
            outcome["result"] = api.txt2img(prompt="a slow fox", seed=2, steps=100, width=128, height=128)
        except RuntimeError as exc:  # webuiapi raises RuntimeError(status, text) on a non-200
            outcome["error"] = exc.args

    call = threading.Thread(target=generate)
    call.start()
    deadline = time.monotonic() + 180
    progress: dict[str, Any] = {}
    while time.monotonic() < deadline and "result" not in outcome:
        progress = api.get_progress()
        if progress["progress"] > 0 and progress["current_image"]:
            break
        time.sleep(0.05)  # poll interval only: the deadline decides
    assert progress.get("current_image"), (progress, outcome, stack.worker.log_tail())
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 100
    assert progress["eta_relative"] >= 0
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))  # plain base64 PNG
    assert preview.size[0] > 0
    api.interrupt()
    call.join(timeout=180)
    assert outcome.get("error", (None,))[0] == 409, (outcome, stack.worker.log_tail())
    assert api.get_progress()["state"]["job_count"] == 0
