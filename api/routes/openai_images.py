"""OpenAI Images: ``POST /v1/images/generations``, ``/edits`` and ``/variations``, answered
synchronously through the same queue as ``POST /v1/images``.

Edits and variations are ``multipart/form-data`` as OpenAI defines them. The form is read here
(after authentication, so an unauthenticated upload is never parsed), each file part at most
``SFUMATO_MAX_UPLOAD_BYTES``; the translation into a Sfumato request is ``api.openai_compat``'s.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from api.deps import Services, Writer
from api.errors import AUTHENTICATED, documented
from api.openai_compat import (
    EditRequest,
    MultipartForm,
    OpenAIImageRequest,
    edit_request,
    images_response,
    to_image_request,
    variation_request,
)
from api.resources import ApiServices
from api.synchronous import generate_and_wait
from api.views import render_job
from core.apikeys import Principal
from core.errors import InvalidRequest
from core.jobs import JobRecord

router = APIRouter(prefix="/v1/images", tags=["openai"])

_OK = {
    "description": "OpenAI ImagesResponse: created, data[] (url or b64_json), output_format, size",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
#: Text fields and file parts a form may have: far more than OpenAI's forms use, few enough
#: that a form of thousands of tiny parts is refused before it costs anything.
_MAX_FORM_FIELDS = 64
_MAX_FORM_FILES = 4


def _form_schema(*, edit: bool) -> dict[str, Any]:
    """The multipart request body in the OpenAPI schema (the route reads the form itself)."""
    text = {"type": "string"}
    properties: dict[str, Any] = {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP; one image."},
        "model": text,
        "n": {"type": "integer", "minimum": 1},
        "size": {"type": "string", "description": "'WIDTHxHEIGHT' or 'auto' (the image's own size, fitted)."},
        "response_format": {"type": "string", "enum": ["url", "b64_json"]},
        "user": text,
    }
    if edit:
        properties["prompt"] = text
        properties["mask"] = {
            "type": "string",
            "format": "binary",
            "description": "Same size as image: transparent (or, without transparency, white) = edited.",
        }
        properties["image[]"] = {"type": "string", "format": "binary", "description": "Instead of image."}
        properties["output_format"] = {"type": "string", "enum": ["png", "jpeg", "webp"]}
    required = ["image", "prompt"] if edit else ["image"]
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": True}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


async def read_multipart(request: Request, max_upload_bytes: int) -> MultipartForm:
    """The form's text fields (each once) and file parts (each at most ``max_upload_bytes``)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest(
            f"{request.url.path} takes a multipart/form-data body, as OpenAI's does; got {content_type or 'none'}",
            param="body",
        )
    try:
        form = await request.form(max_files=_MAX_FORM_FILES, max_fields=_MAX_FORM_FIELDS)
    except HTTPException as exc:  # starlette's answer to a malformed or oversized form
        raise InvalidRequest(f"the multipart body could not be read: {exc.detail}", param="body") from None
    texts: dict[str, str] = {}
    files: defaultdict[str, list[bytes]] = defaultdict(list)
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read(max_upload_bytes + 1)
                if len(data) > max_upload_bytes:
                    param = name.removesuffix("[]")
                    raise InvalidRequest(f"{param} is larger than the limit of {max_upload_bytes} bytes", param=param)
                files[name].append(data)
            elif name in texts:
                raise InvalidRequest(f"{name} was sent more than once; send it once", param=name)
            else:
                texts[name] = value
    finally:
        await form.close()
    return MultipartForm(texts, dict(files))


async def _answer(record: JobRecord, response_format: str, request: Request, services: ApiServices) -> JSONResponse:
    """OpenAI's ImagesResponse for a succeeded job, with its id in ``X-Sfumato-Job-Id``."""
    view = await run_in_threadpool(render_job, record, services, str(request.base_url))
    urls = [image.url for image in view.images]
    body_out = await run_in_threadpool(images_response, record, urls, response_format, services.store)
    return JSONResponse(body_out, headers={"X-Sfumato-Job-Id": record.payload.job_id})


async def _run_form(edit: EditRequest, request: Request, services: ApiServices, principal: Principal) -> JSONResponse:
    try:
        record = await generate_and_wait(edit.request, services, principal)
    except InvalidRequest as exc:
        if edit.size is None or edit.size == "auto" or exc.param not in ("width", "height"):
            raise
        # The caller sent size, not width/height: name the field they can change.
        raise InvalidRequest(f"size {edit.size!r}: {exc.message}", param="size", code=exc.code) from None
    return await _answer(record, edit.response_format, request, services)


@router.post("/generations", responses={200: _OK, **documented(409, 504, *AUTHENTICATED)})
async def openai_generate(body: OpenAIImageRequest, request: Request, services: Services, principal: Writer) -> Any:
    """Generate images and answer in OpenAI's shape once they are ready (or 504 after
    SFUMATO_OPENAI_TIMEOUT_S, canceling the job). ``X-Sfumato-Job-Id`` names the job."""
    record = await generate_and_wait(to_image_request(body), services, principal)
    return await _answer(record, body.response_format or "url", request, services)


@router.post(
    "/edits", responses={200: _OK, **documented(409, 504, *AUTHENTICATED)}, openapi_extra=_form_schema(edit=True)
)
async def openai_edit(request: Request, services: Services, principal: Writer) -> Any:
    """Edit an image (multipart, as OpenAI's): inpainting where ``mask`` is transparent (or
    white), img2img of the whole image without a mask. Answers like ``/generations``."""
    form = await read_multipart(request, services.settings.max_upload_bytes)
    edit = await run_in_threadpool(edit_request, form, services.settings)
    return await _run_form(edit, request, services, principal)


@router.post(
    "/variations",
    responses={200: _OK, **documented(409, 504, *AUTHENTICATED)},
    openapi_extra=_form_schema(edit=False),
)
async def openai_variation(request: Request, services: Services, principal: Writer) -> Any:
    """Variations of an image (multipart, as OpenAI's): img2img at strength 0.7 without a
    prompt, one seed per image. Answers like ``/generations``."""
    form = await read_multipart(request, services.settings.max_upload_bytes)
    variation = await run_in_threadpool(variation_request, form, services.settings)
    return await _run_form(variation, request, services, principal)
