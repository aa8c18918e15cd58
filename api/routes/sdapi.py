"""AUTOMATIC1111-compatible API under ``/sdapi/v1`` (docs/api/a1111.md lists every field).

Routes are thin: api/a1111/ translates A1111's shapes, and a generation goes through the one
submit path of ``POST /v1/images`` (validation, quotas, queue, batching workers), then waits
like the OpenAI endpoint (SFUMATO_OPENAI_TIMEOUT_S; on timeout the job is canceled and the
answer is 504). While it waits, the job is the caller's "current job" that ``/progress``,
``/interrupt`` and ``/skip`` act on. Options are per API key, never global.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.a1111.current_job import IDLE, CurrentJobs, progress_view
from api.a1111.infotext import read_png_info
from api.a1111.models import GenerationRequest, Img2ImgRequest, PngInfoRequest, Txt2ImgRequest
from api.a1111.options import OptionsStore
from api.a1111.responses import generation_response
from api.a1111.samplers import SCHEDULES, sampler_list
from api.a1111.translate import img2img_request, their_param, txt2img_request
from api.deps import Reader, Services, Writer
from api.errors import AUTHENTICATED, documented
from api.resources import ApiServices
from api.submission import submit
from api.synchronous import raise_unless_succeeded, wait_until_final
from core.apikeys import Principal
from core.errors import InvalidRequest, JobNotFound, ServiceError
from core.jobs import redis_errors
from core.loras import available_loras
from core.models import resolve_model, served_models
from core.schemas import ImageRequest

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])

_GENERATED: dict[int | str, dict[str, Any]] = {
    200: {"description": "A1111's answer: images (base64 PNG), parameters, info (a JSON string)"}
}
_JSON: dict[int | str, dict[str, Any]] = {200: {"description": "As A1111 answers it"}}


def _options(services: ApiServices) -> OptionsStore:
    return OptionsStore(services.jobs.connection, services.settings)


def _current(services: ApiServices) -> CurrentJobs:
    return CurrentJobs(services.jobs.connection, services.settings)


async def _generate(body: GenerationRequest, services: ApiServices, principal: Principal) -> dict[str, Any]:
    """Translate, submit, wait as the caller's current job, answer in A1111's shape."""
    settings = services.settings

    def translate() -> ImageRequest:
        options = _options(services).caller(principal)
        if isinstance(body, Img2ImgRequest):
            return img2img_request(body, options, settings)
        assert isinstance(body, Txt2ImgRequest)
        return txt2img_request(body, options, settings)

    image_request = await run_in_threadpool(translate)
    try:
        submitted = await submit(image_request, services, principal)
    except InvalidRequest as exc:  # name the A1111 field the client sent, not ours
        renamed = their_param(exc.param)
        if renamed != exc.param:
            exc.message = f"{exc.message} (A1111 field {renamed})"
            exc.param = renamed
        raise
    current = _current(services)
    timeout_s = settings.openai_timeout_s
    await run_in_threadpool(current.remember, principal, submitted.job_id, timeout_s)
    try:
        record = await wait_until_final(services, submitted.job_id, principal.tenant, timeout_s)
    finally:
        with suppress(ServiceError):  # the entry expires on its own anyway
            await run_in_threadpool(current.forget, principal, submitted.job_id)
    raise_unless_succeeded(record)
    return await run_in_threadpool(generation_response, body, record, services.store)


@router.post("/txt2img", responses={**_GENERATED, **documented(409, 504, *AUTHENTICATED)})
async def txt2img(body: Txt2ImgRequest, services: Services, principal: Writer) -> dict[str, Any]:
    """Text to image, answered when the images are ready."""
    return await _generate(body, services, principal)


@router.post("/img2img", responses={**_GENERATED, **documented(409, 504, *AUTHENTICATED)})
async def img2img(body: Img2ImgRequest, services: Services, principal: Writer) -> dict[str, Any]:
    """Image to image from ``init_images[0]``; with ``mask``, inpainting (white is repainted)."""
    return await _generate(body, services, principal)


@router.get("/options", responses={**_JSON, **documented(*AUTHENTICATED)})
def get_options(services: Services, principal: Reader) -> dict[str, Any]:
    """The caller's options (per API key)."""
    return _options(services).view(principal)


@router.post("/options", responses={**_JSON, **documented(*AUTHENTICATED)})
def set_options(body: dict[str, Any], services: Services, principal: Writer) -> None:
    """Change the caller's options: sd_model_checkpoint, CLIP_stop_at_last_layers, live_previews_enable."""
    _options(services).update(principal, body)


@router.get("/sd-models", responses={**_JSON, **documented(*AUTHENTICATED)})
def sd_models(services: Services, _reader: Reader) -> list[dict[str, Any]]:
    """The served models, as checkpoints (their title is what sd_model_checkpoint takes)."""
    return [
        {"title": spec.id, "model_name": spec.id, "hash": None, "sha256": None, "filename": spec.id, "config": None}
        for spec in served_models(services.settings).values()
    ]


@router.get("/samplers", responses={**_JSON, **documented(*AUTHENTICATED)})
def samplers(_reader: Reader) -> list[dict[str, Any]]:
    return sampler_list()


@router.get("/schedulers", responses={**_JSON, **documented(*AUTHENTICATED)})
def schedulers(_reader: Reader) -> list[dict[str, Any]]:
    return list(SCHEDULES)


@router.get("/scripts", responses={**_JSON, **documented(*AUTHENTICATED)})
def scripts(_reader: Reader) -> dict[str, list[str]]:
    """No A1111 scripts run here (ControlNet is built in, through alwayson_scripts)."""
    return {"txt2img": [], "img2img": []}


#: Lists A1111 serves of things Sfumato has none of. Clients fetch them to fill their menus
#: (SillyTavern: VAEs and upscalers; bots: styles); an empty list is the true answer, where a
#: 404 would read as "this is not an A1111 server".
NOTHING_HERE = (
    "sd-vae",
    "upscalers",
    "latent-upscale-modes",
    "prompt-styles",
    "hypernetworks",
    "face-restorers",
    "realesrgan-models",
)


def _nothing_here(_reader: Reader) -> list[Any]:
    """None here: Sfumato has no separate VAEs, upscalers, styles, hypernetworks or face restorers."""
    return []


for _path in NOTHING_HERE:
    router.add_api_route(
        f"/{_path}",
        _nothing_here,
        methods=["GET"],
        name=f"sdapi_{_path}",
        responses={**_JSON, **documented(*AUTHENTICATED)},
    )


@router.get("/loras", responses={**_JSON, **documented(*AUTHENTICATED)})
def loras(services: Services, principal: Reader) -> list[dict[str, Any]]:
    """The LoRAs of the caller's current model (``<lora:name:w>`` in a prompt uses them)."""
    spec = resolve_model(services.settings, _options(services).caller(principal).model)
    return [
        {"name": name, "alias": name, "path": f"{name}.safetensors", "metadata": {}}
        for name in available_loras(services.settings, spec)
    ]


@router.get("/embeddings", responses={**_JSON, **documented(*AUTHENTICATED)})
def embeddings(services: Services, principal: Reader) -> dict[str, Any]:
    """The textual-inversion tokens of the caller's current model."""
    spec = resolve_model(services.settings, _options(services).caller(principal).model)
    loaded = {
        e.token: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None}
        for e in spec.embeddings
    }
    return {"loaded": loaded, "skipped": {}}


@router.get("/progress", responses={**_JSON, **documented(*AUTHENTICATED)})
def progress(services: Services, principal: Reader, skip_current_image: bool = False) -> dict[str, Any]:
    """The caller's current job: fraction done, seconds left, state, and the live preview."""
    job_id = _current(services).current(principal)
    if job_id is None:
        return IDLE
    try:
        record = services.jobs.get(job_id, principal.tenant)
    except JobNotFound:
        return IDLE
    with redis_errors():
        return progress_view(services.jobs.connection, services.settings, record, not skip_current_image)


@router.post("/interrupt", responses={**_JSON, **documented(*AUTHENTICATED)})
def interrupt(services: Services, principal: Writer) -> dict[str, Any]:
    """Stop the caller's current job: a queued one never runs, a running one stops at its next
    step; its txt2img/img2img call answers 409 (canceled). No current job: nothing happens."""
    _current(services).stop(services.jobs, principal)
    return {}


@router.post("/skip", responses={**_JSON, **documented(*AUTHENTICATED)})
def skip(services: Services, principal: Writer) -> dict[str, Any]:
    """A1111 skips to the next image of a batch; Sfumato runs a request's images as one job, so
    skip stops the caller's current job exactly as /interrupt does."""
    _current(services).stop(services.jobs, principal)
    return {}


@router.post("/png-info", responses={**_JSON, **documented(*AUTHENTICATED)})
def png_info(body: PngInfoRequest, services: Services, _reader: Reader) -> dict[str, Any]:
    """The infotext of an image (PNG text chunk, or EXIF for JPEG/WebP), raw and parsed."""
    settings = services.settings
    return read_png_info(body.image, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels)
