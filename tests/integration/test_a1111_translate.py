"""A1111 request shapes -> Sfumato's ImageRequest: what maps, what is accepted at its default,
what is refused (422 naming the A1111 field). Pure translation: no Redis, no HTTP."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from api.a1111.controlnet import controlnet_units
from api.a1111.models import Img2ImgRequest, Txt2ImgRequest
from api.a1111.options import CallerOptions
from api.a1111.samplers import scheduler_for
from api.a1111.translate import img2img_request, their_param, txt2img_request
from core.config import Settings
from core.errors import InvalidRequest

OPTIONS = CallerOptions(model="tiny", clip_layers=1, previews=True)


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


#: What webuiapi 0.9.17's ``WebUIApi().txt2img(prompt=...)`` sends (webuiapi.py, txt2img).
WEBUIAPI_TXT2IMG = {
    "enable_hr": False,
    "hr_scale": 2,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_checkpoint_name": None,
    "hr_sampler_name": None,
    "hr_scheduler": None,
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "denoising_strength": 0.7,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "prompt": "a red fox",
    "styles": [],
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_h": 0,
    "seed_resize_from_w": 0,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 20,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "negative_prompt": "",
    "eta": 1.0,
    "s_churn": 0,
    "s_tmax": 0,
    "s_tmin": 0,
    "s_noise": 1,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "sampler_name": "Euler a",
    "scheduler": "automatic",
    "sampler_index": "Euler a",
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
}


def _txt2img(settings: Settings, **changes: object):
    return txt2img_request(Txt2ImgRequest.model_validate({**WEBUIAPI_TXT2IMG, **changes}), OPTIONS, settings)


def test_webuiapi_defaults_translate_to_a_plain_request(make_settings) -> None:
    request = _txt2img(make_settings(), seed=7, batch_size=2, n_iter=3)
    assert request.prompt == "a red fox"
    assert (request.width, request.height, request.steps, request.guidance_scale) == (512, 512, 20, 7.0)
    assert request.scheduler == "euler_a"
    assert request.seed == 7
    assert request.n == 6  # batch_size x n_iter
    assert request.clip_skip == 0 and request.model == "tiny" and request.output_format == "png"
    assert request.preview is True and request.image is None and request.strength is None


def test_seed_minus_one_is_random_and_override_settings_apply_to_the_request(make_settings) -> None:
    override = {"sd_model_checkpoint": "tiny [0123abcd]", "CLIP_stop_at_last_layers": 2}
    request = _txt2img(make_settings(), override_settings=override)
    assert request.seed is None
    assert request.clip_skip == 1  # A1111 "Clip skip 2" is our 1
    assert request.model == "tiny"


@pytest.mark.parametrize(
    ("sampler", "schedule", "expected"),
    [
        ("Euler a", "automatic", "euler_a"),
        ("Euler a", "Uniform", "euler_a"),
        ("DPM++ 2M", "Karras", "dpmpp_2m_karras"),
        ("DPM++ 2M", "automatic", "dpmpp_2m_karras"),  # A1111 1.9+: its default schedule is Karras
        ("DPM++ 2M", None, "dpmpp_2m_karras"),
        ("DPM++ 2M", "uniform", "dpmpp_2m"),  # the plain schedule, asked for by name
        ("DPM++ 2M", "normal", "dpmpp_2m"),  # SillyTavern's default: the plain schedule too
        ("DPM++ 2M Karras", None, "dpmpp_2m_karras"),
        ("DPM++ 2M Karras", "karras", "dpmpp_2m_karras"),
        ("k_lms", "", "lms"),
        (None, None, None),
    ],
)
def test_sampler_and_scheduler_join_into_one_of_ours(sampler, schedule, expected) -> None:
    assert scheduler_for(sampler, schedule) == expected


@pytest.mark.parametrize(
    ("sampler", "schedule", "param"),
    [
        ("Euler a", "Karras", "scheduler"),
        ("Euler", "exponential", "scheduler"),
        ("DPM++ 2M Karras", "uniform", "scheduler"),
        ("DPM++ 3M SDE", None, "sampler_name"),
    ],
)
def test_an_unknown_sampler_or_pairing_is_refused(sampler, schedule, param) -> None:
    with pytest.raises(InvalidRequest) as caught:
        scheduler_for(sampler, schedule)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enable_hr", True),
        ("restore_faces", True),
        ("tiling", True),
        ("script_name", "X/Y/Z plot"),
        ("script_args", [1]),
        ("subseed_strength", 0.5),
        ("styles", ["my style"]),
        ("s_churn", 0.3),
        ("eta", 0.4),
        ("disable_extra_networks", True),
    ],
)
def test_a_field_asking_for_what_sfumato_does_not_do_is_a_422_naming_it(make_settings, field, value) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _txt2img(make_settings(), **{field: value})
    assert caught.value.param == field
    assert "docs/api/a1111.md" in caught.value.message


#: What SillyTavern's image extension sends for an A1111 source (its server forwards the body as
#: it is, its own ``url`` and ``auth`` included): public/scripts/extensions/stable-diffusion.
SILLYTAVERN_TXT2IMG = {
    "url": "http://127.0.0.1:8000",
    "auth": "me:sf_secret",
    "prompt": "best quality, a red fox",
    "negative_prompt": "lowres",
    "sampler_name": "Euler a",
    "scheduler": "automatic",
    "steps": 20,
    "cfg_scale": 7,
    "width": 512,
    "height": 512,
    "restore_faces": False,
    "enable_hr": False,
    "hr_upscaler": "Latent",
    "hr_scale": 2.0,
    "hr_additional_modules": [],
    "denoising_strength": 0.7,
    "hr_second_pass_steps": 0,
    "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic"},
    "override_settings_restore_afterwards": True,
    "clip_skip": 2,
    "save_images": True,
    "send_images": True,
    "do_not_save_grid": False,
    "do_not_save_samples": False,
}


def test_sillytavern_requests_translate(make_settings) -> None:
    """Its connection fields are dropped, save_images is what Sfumato does anyway (every job's
    images stay in the store), and sd_vae at the value GET /options shows asks for nothing."""
    body = Txt2ImgRequest.model_validate(SILLYTAVERN_TXT2IMG)
    request = txt2img_request(body, OPTIONS, make_settings())
    assert (request.prompt, request.negative_prompt) == ("best quality, a red fox", "lowres")
    assert request.scheduler == "euler_a"
    assert request.clip_skip == 1 and request.seed is None and request.n == 1
    assert "sf_secret" not in request.model_dump_json()


def test_sdnext_clip_skip_is_the_override_by_another_name(make_settings) -> None:
    assert _txt2img(make_settings(), clip_skip=3).clip_skip == 2  # A1111 numbering, as SD.Next's
    with pytest.raises(InvalidRequest) as caught:
        _txt2img(make_settings(), clip_skip=3, override_settings={"CLIP_stop_at_last_layers": 2})
    assert caught.value.param == "clip_skip"
    with pytest.raises(InvalidRequest) as caught:
        _txt2img(make_settings(), clip_skip=0)
    assert caught.value.param == "clip_skip"


def test_unknown_fields_are_refused_by_the_model() -> None:
    with pytest.raises(ValueError, match="sd_vae_extra"):
        Txt2ImgRequest.model_validate({**WEBUIAPI_TXT2IMG, "sd_vae_extra": 1})


def test_override_settings_take_only_the_keys_we_honour(make_settings) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _txt2img(make_settings(), override_settings={"sd_vae": "vae-ft-mse"})
    assert caught.value.param == "override_settings.sd_vae"
    with pytest.raises(InvalidRequest) as caught:
        _txt2img(make_settings(), override_settings={"sd_model_checkpoint": "sdxl-base"})
    assert caught.value.param == "override_settings.sd_model_checkpoint"
    assert "tiny" in caught.value.message  # lists the valid models
    with pytest.raises(InvalidRequest) as caught:
        _txt2img(make_settings(), override_settings={"CLIP_stop_at_last_layers": 99})
    assert caught.value.param == "override_settings.CLIP_stop_at_last_layers"


def test_imagerequest_checks_name_the_a1111_field(make_settings) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _txt2img(make_settings(), seed=2**40)
    assert caught.value.param == "seed"
    with pytest.raises(InvalidRequest) as caught:
        _txt2img(make_settings(), prompt="  ")
    assert caught.value.param == "prompt"
    assert their_param("guidance_scale") == "cfg_scale"
    assert their_param("n") == "batch_size"
    assert their_param("controlnet[0].scale") == "alwayson_scripts.controlnet.args[0].scale"


def test_img2img_maps_the_init_image_mask_and_strength(make_settings) -> None:
    image = "data:image/png;base64," + _png_b64()
    body = Img2ImgRequest.model_validate(
        {"prompt": "a fox", "init_images": [image], "denoising_strength": 0.5, "mask": _png_b64(), "mask_blur": 4}
    )
    request = img2img_request(body, OPTIONS, make_settings())
    assert request.image == image and request.mask is not None and request.strength == 0.5
    with pytest.raises(InvalidRequest) as caught:
        img2img_request(Img2ImgRequest.model_validate({"prompt": "a fox"}), OPTIONS, make_settings())
    assert caught.value.param == "init_images"
    for field, value in (("inpainting_mask_invert", 1), ("resize_mode", 2), ("mask_blur", 12)):
        with pytest.raises(InvalidRequest) as caught:
            img2img_request(
                Img2ImgRequest.model_validate({"prompt": "a fox", "init_images": [image], field: value}),
                OPTIONS,
                make_settings(),
            )
        assert caught.value.param == field


def test_controlnet_units_map_and_other_scripts_must_be_off() -> None:
    image = _png_b64()
    unit = {"image": image, "module": "canny", "model": "edges [abc123]", "weight": 0.6, "guidance_end": 0.8}
    off = {"image": image, "model": "edges", "enabled": False}
    units = controlnet_units({"ControlNet": {"args": [unit, off]}, "ADetailer": {"args": [False]}})
    assert len(units) == 1
    assert (units[0].name, units[0].preprocess, units[0].scale, units[0].end) == ("edges", "canny", 0.6, 0.8)
    with pytest.raises(InvalidRequest) as caught:
        controlnet_units({"controlnet": {"args": [{**unit, "module": "openpose"}]}})
    assert caught.value.param == "alwayson_scripts.controlnet.args[0].module"
    with pytest.raises(InvalidRequest) as caught:
        controlnet_units({"ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt"}]}})
    assert caught.value.param == "alwayson_scripts.ADetailer"
