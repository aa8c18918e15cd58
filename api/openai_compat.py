"""OpenAI Images compatibility: the request and response shapes of ``POST /v1/images/generations``.

The translation is all here; the route submits through the same path as ``POST /v1/images``
(same validation, quotas, queue and workers). Sfumato's own request fields (``negative_prompt``,
``steps``, ``seed``, ``guidance_scale``, ``scheduler`` ...) may be sent as extra fields (the
``openai`` package's ``extra_body``); unknown extras are a 422 naming the field.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import param_path
from core.errors import InvalidRequest
from core.jobs import JobRecord
from core.schemas import ImageRequest, OutputFormat
from core.storage import LocalStore, S3Store
from core.text import Name, Text

#: OpenAI's own model names run on the deployment's default model.
OPENAI_MODEL_PREFIXES = ("dall-e", "gpt-image")
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class OpenAIImageRequest(BaseModel):
    """The OpenAI Images ``generations`` request. Quality/style knobs are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    prompt: Text = Field(..., min_length=1)
    model: Name | None = Field(None, description="A Sfumato model id; OpenAI names use the default model.")
    n: int = Field(1, ge=1)
    size: str | None = Field(None, description="'WIDTHxHEIGHT' (multiples of 8) or 'auto'.")
    response_format: Literal["url", "b64_json"] | None = Field(None, description="Default 'url'.")
    output_format: OutputFormat | None = None
    user: Name | None = Field(None, max_length=256, description="Accepted for compatibility; not stored.")
    quality: Name | None = None
    style: Name | None = None
    background: Name | None = None
    moderation: Name | None = None
    output_compression: int | None = None
    stream: bool | None = None


def _size(size: str | None) -> dict[str, int]:
    if size is None or size == "auto":
        return {}
    match = _SIZE.match(size)
    if not match:
        raise InvalidRequest(f"size is {size!r}; use 'WIDTHxHEIGHT' such as '512x512', or 'auto'", param="size")
    return {"width": int(match.group(1)), "height": int(match.group(2))}


def to_image_request(body: OpenAIImageRequest) -> ImageRequest:
    """The Sfumato request an OpenAI request stands for (422 for what cannot be honoured)."""
    if body.stream:
        message = "streaming partial images is not supported; use GET /v1/images/{id}/events"
        raise InvalidRequest(message, param="stream")
    model = body.model
    if model is not None and model.startswith(OPENAI_MODEL_PREFIXES):
        model = None
    fields: dict[str, Any] = {**_size(body.size), **(body.model_extra or {})}
    fields.update(prompt=body.prompt, n=body.n, model=model)
    if body.output_format is not None:
        fields["output_format"] = body.output_format
    try:
        return ImageRequest.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = param_path(error.get("loc", ()))
        raise InvalidRequest(f"{param}: {error.get('msg', 'invalid value')}", param=param) from None


def images_response(
    record: JobRecord, urls: list[str], response_format: str, store: LocalStore | S3Store
) -> dict[str, Any]:
    """OpenAI's ``ImagesResponse`` for a succeeded job (blocking: b64_json reads the store)."""
    assert record.result is not None
    payload = record.payload
    data: list[dict[str, Any]] = []
    for image, url in zip(record.result.images, urls, strict=True):
        if response_format == "b64_json":
            data.append({"b64_json": base64.b64encode(store.get(image.key)).decode(), "revised_prompt": None})
        else:
            data.append({"url": url, "revised_prompt": None})
    return {
        "created": int(payload.created_at),
        "data": data,
        "output_format": payload.output_format,
        "size": f"{payload.width}x{payload.height}",
    }
