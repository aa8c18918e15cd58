"""An A1111 txt2img/img2img request -> the :class:`ImageRequest` it stands for.

What maps (docs/api/a1111.md has the full table): ``prompt`` (``<lora:name:w>`` tags work as
everywhere), ``negative_prompt``, ``seed`` (-1 = random), ``sampler_name`` + ``scheduler``,
``steps``, ``cfg_scale``, ``width``/``height``, ``batch_size`` x ``n_iter`` images (one job:
the worker batches them), ``denoising_strength``, ``init_images[0]``, ``mask``,
``override_settings`` (model and clip skip, for this request only; the caller's stored
options otherwise) and ``alwayson_scripts.controlnet``. What does not map is refused by
api/a1111/unsupported.py before anything is built. Output is always PNG, with its infotext.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from api.a1111.controlnet import controlnet_units
from api.a1111.models import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from api.a1111.options import CLIP_SKIP, MODEL, PREVIEWS, READ_ONLY, CallerOptions, clip_layers_of, model_id_of
from api.a1111.samplers import scheduler_for
from api.a1111.unsupported import IMG2IMG, TXT2IMG, refuse_unsupported
from api.errors import param_path
from core.config import Settings
from core.errors import InvalidRequest
from core.schemas import MAX_SEED, ImageRequest

#: Our field -> the A1111 field a refusal from ImageRequest's own checks should name.
_THEIR_NAMES = {
    "guidance_scale": "cfg_scale",
    "scheduler": "sampler_name",
    "n": "batch_size",
    "image": "init_images",
    "strength": "denoising_strength",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "model": "override_settings.sd_model_checkpoint",
}
#: override_settings keys that mean "as the caller's options already say" when they are absent.
_OVERRIDABLE = (MODEL, CLIP_SKIP, PREVIEWS)


def their_param(param: str | None) -> str | None:
    """The A1111 spelling of a field our validation names (``guidance_scale`` -> ``cfg_scale``)."""
    if param is None:
        return None
    head, dot, rest = param.partition(".")
    if head.startswith("controlnet"):
        return "alwayson_scripts.controlnet.args" + param.removeprefix("controlnet")
    return _THEIR_NAMES.get(head, head) + dot + rest


def _effective_options(body: GenerationRequest, options: CallerOptions, settings: Settings) -> CallerOptions:
    overrides = body.override_settings or {}
    for key, value in overrides.items():
        if key in READ_ONLY and value == READ_ONLY[key]:
            continue  # what GET /options shows (e.g. sd_vae "Automatic"): asks for nothing else
        if key not in _OVERRIDABLE:
            shown = f" (only {READ_ONLY[key]!r}, as GET /options shows)" if key in READ_ONLY else ""
            raise InvalidRequest(
                f"override_settings.{key} is not supported{shown}; supported: {', '.join(_OVERRIDABLE)}",
                param=f"override_settings.{key}",
            )
    model = options.model
    if MODEL in overrides:
        model = model_id_of(settings, overrides[MODEL], f"override_settings.{MODEL}")
    layers = options.clip_layers
    if CLIP_SKIP in overrides:
        layers = clip_layers_of(settings, overrides[CLIP_SKIP], f"override_settings.{CLIP_SKIP}")
    if body.clip_skip is not None:  # SD.Next's spelling of the same override
        asked = clip_layers_of(settings, body.clip_skip, "clip_skip")
        if CLIP_SKIP in overrides and asked != layers:
            raise InvalidRequest(
                f"clip_skip is {body.clip_skip} but override_settings.{CLIP_SKIP} is {overrides[CLIP_SKIP]}; "
                "send one, or the same value in both",
                param="clip_skip",
            )
        layers = asked
    previews = options.previews
    if PREVIEWS in overrides:
        previews = bool(overrides[PREVIEWS])
    return CallerOptions(model=model, clip_layers=layers, previews=previews)


def _seed(seed: int) -> int | None:
    if seed == -1:
        return None
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"seed is {seed}; use -1 (random) or 0..{MAX_SEED}", param="seed")
    return seed


def _common_fields(body: GenerationRequest, options: CallerOptions) -> dict[str, Any]:
    if not body.prompt.strip():
        raise InvalidRequest("prompt is empty; say what to draw", param="prompt")
    return {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "model": options.model,
        "width": body.width,
        "height": body.height,
        "steps": body.steps,
        "guidance_scale": body.cfg_scale,
        "scheduler": scheduler_for(body.sampler_name or body.sampler_index, body.scheduler),
        "seed": _seed(body.seed),
        "n": body.batch_size * body.n_iter,
        "clip_skip": options.clip_layers - 1,
        "output_format": "png",
        "preview": options.previews,
        "controlnet": controlnet_units(body.alwayson_scripts),
    }


def _build(fields: dict[str, Any]) -> ImageRequest:
    try:
        return ImageRequest.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = their_param(param_path(error.get("loc", ())))
        raise InvalidRequest(f"{param}: {error.get('msg', 'invalid value')}", param=param) from None


def txt2img_request(body: Txt2ImgRequest, options: CallerOptions, settings: Settings) -> ImageRequest:
    """The Sfumato request of an A1111 txt2img call (422 for what it cannot honour)."""
    refuse_unsupported(body, TXT2IMG)
    return _build(_common_fields(body, _effective_options(body, options, settings)))


def img2img_request(body: Img2ImgRequest, options: CallerOptions, settings: Settings) -> ImageRequest:
    """The Sfumato request of an A1111 img2img call: ``mask`` makes it inpainting."""
    refuse_unsupported(body, IMG2IMG)
    if not body.init_images:
        raise InvalidRequest("init_images is empty; img2img needs one image", param="init_images")
    if len(body.init_images) > 1:
        raise InvalidRequest(
            f"init_images has {len(body.init_images)} images; Sfumato takes one init image per request",
            param="init_images",
        )
    fields = _common_fields(body, _effective_options(body, options, settings))
    fields.update(image=body.init_images[0], mask=body.mask or None, strength=body.denoising_strength)
    return _build(fields)
