"""Turn a raw :class:`ImageRequest` into a :class:`JobPayload`, or refuse it.

Every limit an operator can set is checked here, before enqueueing, and each refusal names
the field, the value and the limit (``InvalidRequest.param`` is the field).
"""

from __future__ import annotations

import secrets

from core.checkpoints import check_mode
from core.config import Settings
from core.controlnets import normalize_controlnets
from core.errors import InvalidRequest, UnknownChoice
from core.lora_tags import merge_lora_tags
from core.loras import FORMAT_NAMES, REFUSED_FORMATS, available_loras, lora_format, lora_path
from core.models import ModelSpec, resolve_model
from core.prompt_syntax import check_prompt
from core.scheduler_names import canonical_scheduler, scheduler_max_steps
from core.schemas import MAX_SEED, ImageRequest, JobPayload, LoraWeight, Mode, RefinerSettings
from core.uploads import inspect_upload


def _check_max(field: str, value: float, limit: float, *, what: str | None = None) -> None:
    """Refuse ``value > limit``; ``what`` names the quantity when it is not the field itself."""
    if value > limit:
        raise InvalidRequest(f"{what or field} is {value}; the maximum is {limit}", param=field)


def _check_scheduler_steps(scheduler: str, steps: int) -> None:
    """LCM and TCD pick their timesteps from a fixed distillation schedule (50 steps); diffusers
    raises past it, so the request is refused here rather than failed by the worker."""
    limit = scheduler_max_steps(scheduler)
    if limit is not None and steps > limit:
        raise InvalidRequest(
            f"steps is {steps}; the maximum for scheduler {scheduler!r} is {limit} "
            "(few-step samplers are meant for 1-8 steps)",
            param="steps",
        )


def _check_size(field: str, value: int, settings: Settings, spec: ModelSpec) -> None:
    if value % 8:
        raise InvalidRequest(f"{field} is {value}; it must be a multiple of 8", param=field)
    minimum = settings.min_size if spec.min_size is None else min(spec.min_size, settings.min_size)
    if value < minimum:
        raise InvalidRequest(f"{field} is {value}; the minimum is {minimum}", param=field)
    _check_max(field, value, spec.max_size)


def _check_allowed_size(width: int, height: int, spec: ModelSpec) -> None:
    """A model with a ``sizes`` list in the registry serves only those sizes."""
    if spec.sizes and (width, height) not in spec.sizes:
        allowed = ", ".join(f"{w}x{h}" for w, h in spec.sizes)
        raise InvalidRequest(
            f"width x height is {width}x{height}; model {spec.id!r} allows only these sizes: {allowed}",
            param="width",
        )


def _mode(request: ImageRequest) -> Mode:
    if request.mask is not None and request.image is None:
        raise InvalidRequest("mask needs an image to inpaint; send image as well", param="mask")
    if request.image is None:
        if request.strength is not None:
            raise InvalidRequest("strength applies only with an image (img2img/inpainting)", param="strength")
        return "txt2img"
    return "inpaint" if request.mask is not None else "img2img"


def _check_uploads(request: ImageRequest, settings: Settings) -> None:
    for field in ("image", "mask"):
        value = getattr(request, field)
        if value is not None:
            inspect_upload(
                value, field=field, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels
            )


#: LoRA scales are rounded to this many decimals, so 0.7 and 0.7000001 share a batch (and what
#: runs is exactly what the batch key says).
LORA_SCALE_DECIMALS = 3
#: An unknown-LoRA message lists at most this many valid names (GET /v1/models lists all).
_LISTED_LORAS = 50


def _valid_loras_text(offered: list[str]) -> str:
    if not offered:
        return "none (the LoRA folder is empty)"
    more = len(offered) - _LISTED_LORAS
    return ", ".join(offered[:_LISTED_LORAS]) + (f" and {more} more (see GET /v1/models)" if more > 0 else "")


def normalize_loras(
    requested: list[LoraWeight], settings: Settings, spec: ModelSpec | None = None, *, from_field: int | None = None
) -> tuple[LoraWeight, ...]:
    """Check the requested LoRAs and return the canonical set: sorted by name, scales rounded
    to :data:`LORA_SCALE_DECIMALS`, scale-0 entries dropped (a LoRA at 0 is the base model, so
    such a request batches with plain ones). Unknown names list the valid ones of ``spec``'s
    LoRA folder (per model: see core/loras.py).

    Entries past the first ``from_field`` (default: all) came from ``<lora:>`` tags of the
    prompt (core/lora_tags.py): a refusal of one of those names ``prompt``."""
    if not requested:
        return ()
    from_field = len(requested) if from_field is None else from_field
    count_param = "loras" if from_field == len(requested) else "prompt"
    _check_max(count_param, len(requested), settings.max_loras, what="number of loras (field and <lora:> tags)")
    offered = available_loras(settings, spec)
    seen: set[str] = set()
    kept: list[LoraWeight] = []
    for i, lora in enumerate(requested):
        tagged = i >= from_field
        where = f"<lora:{lora.name}> tag of prompt" if tagged else f"loras[{i}]"
        if lora.name not in offered:
            valid = _valid_loras_text(offered)
            raise UnknownChoice(
                f"unknown LoRA {lora.name!r}{' in a <lora:> tag' if tagged else ''}; valid LoRAs: {valid}",
                param="prompt" if tagged else f"loras[{i}].name",
            )
        if lora.name in seen:
            raise InvalidRequest(f"LoRA {lora.name!r} is listed twice; give it once", param=f"loras[{i}].name")
        fmt = lora_format(lora_path(settings, lora.name, spec))
        if fmt in REFUSED_FORMATS:
            raise InvalidRequest(
                f"LoRA {lora.name!r} is in the {FORMAT_NAMES[fmt]} format, which this server cannot load; "
                "LoRA files in the kohya/A1111 (LoCon included), diffusers or peft layout work",
                param="prompt" if tagged else f"loras[{i}].name",
            )
        seen.add(lora.name)
        if not settings.lora_min_scale <= lora.scale <= settings.lora_max_scale:
            raise InvalidRequest(
                f"{where} scale is {lora.scale}; allowed range is {settings.lora_min_scale}..{settings.lora_max_scale}",
                param="prompt" if tagged else f"loras[{i}].scale",
            )
        scale = round(lora.scale, LORA_SCALE_DECIMALS)
        if scale != 0:
            kept.append(LoraWeight(name=lora.name, scale=scale))
    return tuple(sorted(kept, key=lambda lora: lora.name))


#: switch_at is rounded to this many decimals, so near-equal values share a batch.
REFINER_DECIMALS = 3


def normalize_refiner(request: ImageRequest, spec: ModelSpec, mode: Mode, steps: int) -> RefinerSettings | None:
    """Check the SDXL refiner handoff of a request: an SDXL model that has a refiner, txt2img,
    no ControlNet, and at least one step on each side of ``switch_at``."""
    if request.refiner is None:
        return None
    if spec.family != "sdxl" or spec.refiner is None:
        kind = "an SDXL model" if spec.family == "sdxl" else f"a {spec.family} model"
        raise InvalidRequest(
            f"refiner: model {spec.id!r} has no refiner ({kind} without one); "
            "only SDXL models whose GET /v1/models entry shows refiner: true accept it",
            param="refiner",
        )
    if mode != "txt2img":
        raise InvalidRequest(
            "refiner applies only to text-to-image requests; drop image/mask or refiner", param="refiner"
        )
    if request.controlnet:
        raise InvalidRequest("refiner cannot be combined with controlnet; drop one of them", param="refiner")
    switch_at = round(request.refiner.switch_at, REFINER_DECIMALS)
    if not 0 < switch_at < 1 or int(steps * switch_at) < 1 or int(steps * (1 - switch_at)) < 1:
        raise InvalidRequest(
            f"refiner.switch_at {request.refiner.switch_at} with steps {steps} leaves the base or the refiner "
            "no step; use 0 < switch_at < 1 with steps x switch_at >= 1 and steps x (1 - switch_at) >= 1",
            param="refiner.switch_at",
        )
    return RefinerSettings(switch_at=switch_at)


def normalize_request(request: ImageRequest, settings: Settings, *, tenant: str, job_id: str, now: float) -> JobPayload:
    """Validate ``request`` against Settings and the model, fill defaults, resolve the seed."""
    spec = resolve_model(settings, request.model)
    scheduler = canonical_scheduler(request.scheduler or spec.default_scheduler)
    mode = _mode(request)
    check_mode(spec.id, spec.modes, mode)  # an inpainting model draws only inpainting
    for field in ("prompt", "negative_prompt"):
        _check_max(field, len(getattr(request, field)), settings.max_prompt_chars, what=f"{field} length")
    # "is None", not "or": an explicit 0 is refused by the size checks, not silently defaulted.
    width = spec.default_width if request.width is None else request.width
    height = spec.default_height if request.height is None else request.height
    _check_size("width", width, settings, spec)
    _check_size("height", height, settings, spec)
    _check_allowed_size(width, height, spec)
    if width * height > settings.max_pixels:
        raise InvalidRequest(
            f"width x height is {width * height} pixels; the maximum is {settings.max_pixels}", param="width"
        )
    steps = spec.default_steps if request.steps is None else request.steps
    _check_max("steps", steps, settings.max_steps)
    _check_scheduler_steps(scheduler, steps)
    _check_max("n", request.n, settings.max_n)
    guidance = spec.default_guidance if request.guidance_scale is None else request.guidance_scale
    if not settings.min_guidance <= guidance <= settings.max_guidance:
        raise InvalidRequest(
            f"guidance_scale is {guidance}; allowed range is {settings.min_guidance}..{settings.max_guidance}",
            param="guidance_scale",
        )
    _check_max("clip_skip", request.clip_skip, settings.max_clip_skip)
    _check_uploads(request, settings)
    # <lora:name:scale> tags select LoRAs like the loras field and leave the text (A1111).
    prompt, requested_loras, from_field = merge_lora_tags(request.prompt, request.negative_prompt, request.loras)
    loras = normalize_loras(requested_loras, settings, spec, from_field=from_field)
    # A1111 attention syntax and long prompts: malformed weights, certainly too many chunks.
    check_prompt("prompt", prompt, settings.max_prompt_chunks)
    check_prompt("negative_prompt", request.negative_prompt, settings.max_prompt_chunks)
    controlnet = normalize_controlnets(request.controlnet, spec, settings)
    refiner = normalize_refiner(request, spec, mode, steps)
    strength = None if mode == "txt2img" else (request.strength if request.strength is not None else 0.75)
    if strength is not None and int(steps * strength) < 1:
        raise InvalidRequest(
            f"strength {strength} x steps {steps} runs no denoising step; raise strength or steps "
            f"so that steps x strength >= 1",
            param="strength",
        )
    if request.timeout_s is not None:
        _check_max("timeout_s", request.timeout_s, settings.max_timeout_s)
    seed = secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed
    return JobPayload(
        job_id=job_id,
        tenant=tenant,
        model=spec.id,
        mode=mode,
        prompt=prompt,
        # The prompt as written (tags included) for the image's infotext; None when the same.
        prompt_as_written=None if prompt == request.prompt else request.prompt,
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        scheduler=scheduler,
        seed=seed,
        n=request.n,
        clip_skip=request.clip_skip,
        output_format=request.output_format,
        strength=strength,
        exact=request.exact,
        preview=request.preview,
        deadline_at=None if request.timeout_s is None else now + request.timeout_s,
        image_b64=request.image,
        mask_b64=request.mask,
        created_at=now,
        loras=loras,
        controlnet=controlnet,
        refiner=refiner,
    )
