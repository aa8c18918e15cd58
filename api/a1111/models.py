"""The request bodies of A1111's ``/sdapi/v1`` endpoints, as its API declares them.

Every field A1111 1.x accepts is declared, so that what a real client sends parses (plus the
few that popular clients add: SD.Next's ``clip_skip``, SillyTavern's ``url``/``auth``); unknown
fields are a 422 naming the field (A1111 ignores extras, but a field we do not know is a
feature we do not know whether we honour). Which declared fields Sfumato honours, which it
accepts only at their default and which it refuses is decided in api/a1111/translate.py and
api/a1111/unsupported.py, and listed in docs/api/a1111.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.text import Name, Text


class GenerationRequest(BaseModel):
    """Fields txt2img and img2img share (A1111's ``StableDiffusionProcessing``)."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text = ""
    negative_prompt: Text = ""
    styles: list[Name] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool | None = None
    sampler_name: Name | None = None
    #: Deprecated spelling of sampler_name, used when that is absent.
    sampler_index: Name | None = None
    scheduler: Name | None = None
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    # Left out: the model's defaults (A1111's 512 x 512 / 50 steps / 7 would not fit every model).
    steps: int | None = Field(None, ge=1)
    cfg_scale: float | None = Field(None, allow_inf_nan=False)
    distilled_cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: Name | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    force_task_id: Name | None = None
    script_name: Name | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: Text | None = None
    #: SD.Next's per-request clip skip (A1111 numbering); SillyTavern sends it to every A1111 server.
    clip_skip: int | None = None
    #: Not A1111's: SillyTavern's server forwards its own connection settings (the A1111 address,
    #: and its ``user:password``) inside the body. They say nothing about the image; dropped.
    url: Text | None = None
    auth: Text | None = None


class Txt2ImgRequest(GenerationRequest):
    """``POST /sdapi/v1/txt2img``: the hires-fix fields mean something only with ``enable_hr``."""

    enable_hr: bool = False
    denoising_strength: float | None = None
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: Name | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: Name | None = None
    hr_additional_modules: list[Any] | None = None
    hr_sampler_name: Name | None = None
    hr_scheduler: Name | None = None
    hr_prompt: Text = ""
    hr_negative_prompt: Text = ""
    hr_cfg: float | None = None
    hr_distilled_cfg: float | None = None
    firstpass_image: str | None = None


class Img2ImgRequest(GenerationRequest):
    """``POST /sdapi/v1/img2img``: ``mask`` makes it inpainting (white is repainted)."""

    init_images: list[str] = Field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float = Field(0.75, allow_inf_nan=False)
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


class PngInfoRequest(BaseModel):
    """``POST /sdapi/v1/png-info``: a base64 image (raw or a data URL)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(..., min_length=1)
