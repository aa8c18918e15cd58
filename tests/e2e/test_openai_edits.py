"""OpenAI ``images.edit`` and ``images.create_variation`` through the real service: the official
``openai`` package (unchanged) and raw multipart against uvicorn + a worker process + a private
Redis + SeaweedFS, tiny model, 64 px, 4 steps.

What the tests prove: an OpenAI alpha mask (transparent = edit) inpaints exactly like Sfumato's
own white-is-repainted mask, and not like its inverse; an edit without a mask is img2img at the
image's own size; variations are img2img at strength 0.7 with one seed per image; ``image[]``
(how newer ``openai`` versions send images) works for one image and is refused for several;
both response formats come back in OpenAI's ImagesResponse shape.
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.support.env import s3_env, service_env
from tests.support.one_worker_stack import one_worker_stack
from tests.support.processes import ServiceProcess

pytestmark = [
    pytest.mark.timeout(600),
    # The openai package marks create_variation deprecated (OpenAI retired DALL-E 2's endpoint);
    # clients written for it still call it, and Sfumato serves it.
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]

FAST = {"steps": 4}


@dataclass
class Stack:
    http: httpx.Client
    openai: openai.OpenAI
    worker: ServiceProcess


@pytest.fixture(scope="module")
def stack(redis_server, seaweed, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e-openai-edits")
    env = {
        **service_env(redis_server.url, tmp, "e2e-openai-edits", SFUMATO_TORCH_THREADS="2"),
        **s3_env(seaweed, f"e2e-openai-edits-{secrets.token_hex(4)}"),
    }
    with one_worker_stack(env, redis_server.url, tmp / "logs") as running:
        token = running.client.headers["Authorization"].removeprefix("Bearer ")
        client = openai.OpenAI(
            base_url=str(running.client.base_url).rstrip("/") + "/v1", api_key=token, max_retries=0, timeout=180
        )
        yield Stack(running.client, client, running.worker)


def encode(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def picture(width: int = 64, height: int = 64) -> bytes:
    """A picture with structure (a gradient and a square), so img2img has something to keep."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    rgb = np.stack([x, x[::-1, ::-1], np.full_like(x, 90)], axis=-1)
    rgb[height // 4 : height // 2, width // 4 : width // 2] = (250, 250, 20)
    return encode(Image.fromarray(rgb, "RGB"))


def openai_mask(transparent_left: bool = True) -> bytes:
    """OpenAI's kind of mask: opaque black, one half fully transparent (that half is edited)."""
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 32, 64) if transparent_left else (32, 0, 64, 64))
    return encode(img)


def plain_mask(white_left: bool = True) -> bytes:
    """Sfumato's own kind: grey, white where repainted."""
    img = Image.new("L", (64, 64), 0)
    img.paste(255, (0, 0, 32, 64) if white_left else (32, 0, 64, 64))
    return encode(img)


def decoded(item: openai.types.Image) -> Image.Image:
    assert item.b64_json
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(int)


def raw_edit(stack: Stack, mask: bytes, seed: int) -> Image.Image:
    """An edit sent as raw multipart (no openai package), one image, as b64_json."""
    resp = stack.http.post(
        "/v1/images/edits",
        data={"prompt": "a red fox", "response_format": "b64_json", "seed": str(seed), "steps": "4"},
        files={"image": ("in.png", picture(), "image/png"), "mask": ("mask.png", mask, "image/png")},
    )
    assert resp.status_code == 200, (resp.text, stack.worker.log_tail())
    assert resp.headers["x-sfumato-job-id"]
    return Image.open(io.BytesIO(base64.b64decode(resp.json()["data"][0]["b64_json"])))


def test_an_openai_alpha_mask_inpaints_like_the_white_mask_it_stands_for(stack: Stack) -> None:
    result = stack.openai.images.edit(
        image=("in.png", picture(), "image/png"),
        mask=("mask.png", openai_mask(), "image/png"),
        prompt="a red fox",
        n=2,
        response_format="b64_json",
        extra_body={"seed": 7, **FAST},
    )
    assert result.data is not None and len(result.data) == 2 and result.size == "64x64"
    first, second = (decoded(item) for item in result.data)
    assert first.size == second.size == (64, 64)
    infotext = first.info["parameters"]
    assert "Seed: 7" in infotext and "Denoising strength: 0.75" in infotext
    assert "Seed: 8" in second.info["parameters"]

    same = pixels(raw_edit(stack, plain_mask(white_left=True), seed=7))
    inverse = pixels(raw_edit(stack, plain_mask(white_left=False), seed=7))
    # The image of seed 7 ran co-batched with seed 8 above and alone here: equal up to float
    # rounding (at most one 8-bit level, see docs on batch invariance).
    assert np.abs(pixels(first) - same).max() <= 1
    assert np.abs(pixels(first) - inverse).max() > 8


def test_an_edit_without_a_mask_is_img2img_at_the_image_size_with_urls(stack: Stack) -> None:
    result = stack.openai.images.edit(
        image=("in.png", picture(96, 80), "image/png"),
        prompt="a lighthouse",
        model="gpt-image-1",
        extra_body={"seed": 3, **FAST},
    )
    assert result.data is not None and len(result.data) == 1 and result.size == "96x80"
    url = result.data[0].url
    assert url and result.data[0].b64_json is None
    image = Image.open(io.BytesIO(httpx.get(url, timeout=30).content))
    assert image.size == (96, 80)
    assert "Denoising strength: 0.75" in image.info["parameters"]


def test_variations_are_img2img_at_strength_0_7_one_seed_each(stack: Stack) -> None:
    result = stack.openai.images.create_variation(
        image=("in.png", picture(), "image/png"),
        n=2,
        model="dall-e-2",
        response_format="b64_json",
        extra_body={"seed": 11, **FAST},
    )
    assert result.data is not None and len(result.data) == 2 and result.size == "64x64"  # the image's size
    first, second = (decoded(item) for item in result.data)
    assert "Denoising strength: 0.7," in first.info["parameters"] + ","
    assert "Seed: 11" in first.info["parameters"] and "Seed: 12" in second.info["parameters"]
    assert not np.array_equal(pixels(first), pixels(second))


def test_image_brackets_take_one_image_and_refuse_several(stack: Stack) -> None:
    one = stack.openai.images.edit(
        image=[("in.png", picture(), "image/png")], prompt="a fox", response_format="b64_json", extra_body=FAST
    )
    assert one.data is not None and decoded(one.data[0]).size == (64, 64)
    with pytest.raises(openai.UnprocessableEntityError) as several:
        stack.openai.images.edit(image=[("a.png", picture()), ("b.png", picture())], prompt="a fox")
    assert several.value.param == "image"


def test_bad_uploads_are_422s_the_openai_package_raises(stack: Stack) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as not_an_image:
        stack.openai.images.create_variation(image=("notes.txt", b"not a picture", "text/plain"))
    assert not_an_image.value.param == "image"
    with pytest.raises(openai.UnprocessableEntityError) as small_mask:
        stack.openai.images.edit(
            image=("in.png", picture(), "image/png"), mask=("m.png", encode(Image.new("RGBA", (32, 32)))), prompt="x"
        )
    assert small_mask.value.param == "mask" and "32x32" in str(small_mask.value)
    with pytest.raises(openai.UnprocessableEntityError) as too_many:
        stack.openai.images.create_variation(image=("in.png", picture(), "image/png"), n=99)
    assert too_many.value.param == "n"
