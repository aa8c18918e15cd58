"""A job view's ``params`` in-process (TestClient, real Redis, no worker): what the job was asked
to draw, resolved, and shaped so that posting it back asks for the same images, which is what
the playground's "use these settings" and any other client's "again" rely on."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from core.config import Settings
from tests.conftest import SettingsFactory
from tests.support.keys import bearer, create_key

PARAM_KEYS = {
    "prompt", "negative_prompt", "model", "width", "height", "steps", "guidance_scale", "scheduler",
    "seed", "n", "clip_skip", "loras", "strength", "output_format", "refiner",
}  # fmt: skip
KOHYA_KEYS = ["lora_unet_mid_block_resnets_0_conv1.lora_down.weight", "lora_unet_mid_block_resnets_0_conv1.alpha"]


def _lora_file(path: Path) -> None:
    """A kohya-layout LoRA header (the API reads only the header; no worker loads it here)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i, key in enumerate(KOHYA_KEYS):
        header[key] = {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(4 * len(KOHYA_KEYS)))


@pytest.fixture
def settings(make_settings: SettingsFactory, clean_redis: Any, tmp_path: Path) -> Settings:
    for name in ("ink", "wash"):
        _lora_file(tmp_path / "loras" / f"{name}.safetensors")
    return make_settings(auth_enabled=True, lora_dir=tmp_path / "loras")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=bearer(create_key(settings))) as test_client:
        yield test_client


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 200)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _submit(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/v1/images", json=body)
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


def test_params_show_the_request_resolved_tags_in_the_prompt_and_field_loras_apart(client: TestClient) -> None:
    body = {
        "prompt": "a kite <lora:wash:0.5> over hills",
        "negative_prompt": "blurry",
        "loras": [{"name": "ink", "scale": 0.8}],
        "scheduler": "DPM++ 2M Karras",
        "steps": 3,
        "n": 2,
        "clip_skip": 1,
        "output_format": "webp",
    }
    job = _submit(client, body)
    params = client.get(f"/v1/images/{job['id']}").json()["params"]
    assert set(params) == PARAM_KEYS
    assert params["prompt"] == "a kite <lora:wash:0.5> over hills"  # as written, the tag kept
    assert params["loras"] == [{"name": "ink", "scale": 0.8}]  # the field's only: the tag's is in the prompt
    assert params["scheduler"] == "dpmpp_2m_karras"
    assert isinstance(params["seed"], int)  # resolved, though the request had none
    assert (params["width"], params["height"]) == (64, 64)  # the tiny model's defaults, filled in
    assert params["guidance_scale"] > 0 and params["strength"] is None and params["refiner"] is None
    assert {k: params[k] for k in ("negative_prompt", "steps", "n", "clip_skip", "output_format")} == {
        "negative_prompt": "blurry", "steps": 3, "n": 2, "clip_skip": 1, "output_format": "webp",
    }  # fmt: skip
    listed = client.get("/v1/images").json()["data"]
    assert [j["params"] for j in listed if j["id"] == job["id"]] == [params]
    assert job["params"] == params  # the POST answer has them too


def test_posting_params_back_asks_for_the_same_images(client: TestClient) -> None:
    first = _submit(client, {"prompt": "<lora:ink> a fox", "loras": [{"name": "wash", "scale": 1.2}], "steps": 2})
    again = _submit(client, first["params"])  # accepted as it is: no field a request lacks
    assert again["id"] != first["id"]
    assert again["params"] == first["params"]


def test_img2img_params_have_the_strength_but_never_the_image_or_mask(client: TestClient) -> None:
    image = _png_b64()
    job = _submit(client, {"prompt": "repaint", "image": image, "mask": image, "strength": 0.6, "steps": 4})
    view = client.get(f"/v1/images/{job['id']}").json()
    assert view["mode"] == "inpaint" and view["params"]["strength"] == 0.6
    assert image not in json.dumps(view)  # no base64 input in the view, anywhere
    assert set(view["params"]) == PARAM_KEYS
