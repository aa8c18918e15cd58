"""A1111's txt2img/img2img answer built from a finished job (api/a1111/responses.py), read back
the way A1111 clients read it: ``info`` is a JSON string whose seeds and infotexts match the
images, and ``parameters`` is the request with its defaults filled in (the model's, here).
Real PNGs in the real local store; no worker needed."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image, PngImagePlugin

from api.a1111.models import Img2ImgRequest, Txt2ImgRequest
from api.a1111.responses import generation_response
from core.jobs import JobRecord
from core.schemas import JobPayload, JobResult, StoredImage, Timings
from core.storage import LocalStore


def _t2i(**fields: object) -> Txt2ImgRequest:
    return Txt2ImgRequest.model_validate(fields)


def _i2i(**fields: object) -> Img2ImgRequest:
    return Img2ImgRequest.model_validate(fields)


def _payload(**fields: object) -> JobPayload:
    values: dict[str, object] = {
        "job_id": "job-a1111",
        "tenant": "t1",
        "model": "tiny",
        "mode": "txt2img",
        "prompt": "a fox",
        "negative_prompt": "blurry",
        "width": 64,
        "height": 72,
        "steps": 5,
        "guidance_scale": 6.5,
        "scheduler": "dpmpp_2m_karras",
        "seed": 10,
        "n": 2,
        "clip_skip": 1,
        "output_format": "png",
        "created_at": 0.0,
    }
    values.update(fields)
    return JobPayload(**values)  # type: ignore[arg-type]


def _finished(store: LocalStore, payload: JobPayload) -> JobRecord:
    images = []
    for index, seed in enumerate(payload.seeds):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"{payload.prompt}\nSteps: {payload.steps}, Seed: {seed}, Size: 64x72")
        buf = io.BytesIO()
        Image.new("RGB", (64, 72), (index * 40, 10, 10)).save(buf, format="PNG", pnginfo=info)
        key = f"t1/{payload.job_id}/{index}.png"
        store.put(key, buf.getvalue(), "image/png")
        images.append(StoredImage(key=key, index=index, seed=seed, width=64, height=72, format="png"))
    result = JobResult(images=images, timings=Timings())
    return JobRecord(payload, "succeeded", 0.0, 0.0, 1.0, result, None)


def test_info_is_a_json_string_with_the_seeds_and_infotexts_of_the_images(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, b"k" * 32)
    payload = _payload(prompt_as_written="a fox <lora:ink:0.5>", prompt="a fox")
    answer = generation_response(_t2i(prompt="a fox <lora:ink:0.5>", batch_size=2), _finished(store, payload), store)
    info = json.loads(answer["info"])  # what webuiapi and every A1111 client do
    assert (info["seed"], info["all_seeds"]) == (10, [10, 11])
    assert info["prompt"] == "a fox <lora:ink:0.5>" and info["all_prompts"] == [info["prompt"]] * 2
    assert info["sampler_name"] == "DPM++ 2M Karras" and info["clip_skip"] == 2  # A1111's names and numbering
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (64, 72, 5, 6.5)
    assert info["sd_model_name"] == "tiny" and info["extra_generation_params"] == {"Sfumato job": "job-a1111"}
    for b64, text, seed in zip(answer["images"], info["infotexts"], info["all_seeds"], strict=True):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
            assert image.info["parameters"] == text and f"Seed: {seed}" in text


def test_parameters_fill_what_the_request_left_to_the_model(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, b"k" * 32)
    record = _finished(store, _payload())
    params = generation_response(_t2i(prompt="a fox"), record, store)["parameters"]
    # A1111 echoes its constant defaults (512 x 512, 50 steps); ours are the model's, resolved.
    assert (params["width"], params["height"], params["steps"], params["cfg_scale"]) == (64, 72, 5, 6.5)
    assert params["sampler_name"] == "DPM++ 2M Karras" and params["seed"] == -1  # the seed as sent, as A1111
    sent = generation_response(
        _t2i(prompt="a fox", steps=5, sampler_name="DPM++ 2M", scheduler="karras"), record, store
    )
    assert (sent["parameters"]["sampler_name"], sent["parameters"]["scheduler"]) == ("DPM++ 2M", "karras")  # as sent


def test_img2img_blanks_the_uploads_and_send_images_false_sends_none(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, b"k" * 32)
    record = _finished(store, _payload(mode="img2img", strength=0.6, image_b64="eA=="))
    body = _i2i(prompt="a fox", init_images=["eA=="], mask="eA==", send_images=False)
    answer = generation_response(body, record, store)
    assert answer["images"] == []
    assert answer["parameters"]["init_images"] is None and answer["parameters"]["mask"] is None
    assert json.loads(answer["info"])["denoising_strength"] == 0.6


def test_sillytaverns_connection_fields_are_never_echoed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, b"k" * 32)
    body = _t2i(prompt="a fox", url="http://127.0.0.1:8000", auth="me:sf_secret", clip_skip=2)
    params = generation_response(body, _finished(store, _payload()), store)["parameters"]
    assert "auth" not in params and "url" not in params and params["clip_skip"] == 2
    plain = generation_response(_t2i(prompt="a fox"), _finished(store, _payload()), store)
    assert "clip_skip" not in plain["parameters"]  # SD.Next's field, echoed only when sent
