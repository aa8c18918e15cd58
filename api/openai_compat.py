"""OpenAI Images compatibility: the request and response shapes of ``POST /v1/images/generations``,
``/edits`` and ``/variations``.

The translation is all here; the routes submit through the same path as ``POST /v1/images``
(same validation, quotas, queue and workers). Sfumato's own request fields (``negative_prompt``,
``steps``, ``seed``, ``guidance_scale``, ``scheduler`` ...) may be sent as extra fields (the
``openai`` package's ``extra_body``; in the multipart forms of edits and variations, as text
fields, lists and objects as JSON text); unknown extras are a 422 naming the field.

Edits and variations take one image (``image``, or one ``image[]`` part as newer ``openai``
versions send it): a mask makes an edit inpainting, none makes it img2img. OpenAI's masks are
transparent where the image is to be edited; Sfumato's are white there, so a mask with
transparent pixels is converted here, and a plain black/white one is taken as it is.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import param_path
from core.config import Settings
from core.errors import InvalidRequest
from core.jobs import JobRecord
from core.models import ModelSpec, resolve_model
from core.schemas import ImageRequest, OutputFormat
from core.storage import LocalStore, S3Store
from core.text import Name, Text
from core.uploads import ALLOWED_FORMATS, UploadInfo, inspect_upload

#: OpenAI's own model names run on the deployment's default model.
OPENAI_MODEL_PREFIXES = ("dall-e", "gpt-image")
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_Model = TypeVar("_Model", bound=BaseModel)


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
    return _validated(ImageRequest, fields)


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


# --- POST /v1/images/edits and /v1/images/variations: multipart forms --------------------------

#: img2img strength of a variation when the caller sends none. At 0.7 the first, noisiest 30 % of
#: the schedule (where layout, large shapes and palette are decided) is taken from the image and
#: only the rest is denoised anew, so each of the ``n`` images (one seed each) is recognisably the
#: same picture with its own detail.
#: Sfumato's usual 0.75 img2img default drifts a little further from the picture; lower values
#: stay closer to it, and so to each other. A ``strength`` form field overrides it.
VARIATION_STRENGTH = 0.7
#: A variation has no prompt. A single space tokenizes like an empty prompt (start and end
#: tokens only), so the model denoises without text guidance; a ``prompt`` form field (a
#: Sfumato extension) steers the variations instead.
VARIATION_PROMPT = " "
#: Sfumato fields whose values are lists or objects: in a form they are JSON text.
_JSON_FIELDS = frozenset({"loras", "controlnet", "refiner", "webhook_events"})
#: Fields that are files in the form, never Sfumato extras sent as text.
_FILE_FIELDS = ("image", "image[]", "mask")
#: A mask pixel whose alpha is below this is transparent, i.e. edited (OpenAI: "fully
#: transparent areas"); diffusers binarises masks at the same 50 %.
_ALPHA_EDITED_BELOW = 128


class OpenAIImageForm(BaseModel):
    """The text fields of an OpenAI ``edits`` or ``variations`` form; Sfumato fields as extras.

    Values arrive as text and pydantic's lax mode reads numbers and booleans from it. The
    quality knobs newer OpenAI versions send are accepted and ignored, as on generations."""

    model_config = ConfigDict(extra="allow")

    prompt: Text | None = Field(None, min_length=1, description="Edits: required. Variations: optional.")
    model: Name | None = None
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: OutputFormat | None = None
    user: Name | None = Field(None, max_length=256)
    safety_identifier: Name | None = Field(None, max_length=256)
    quality: Name | None = None
    style: Name | None = None
    background: Name | None = None
    moderation: Name | None = None
    input_fidelity: Name | None = None
    output_compression: int | None = None
    stream: bool | None = None
    partial_images: int | None = None


@dataclass(frozen=True)
class MultipartForm:
    """A parsed ``multipart/form-data`` body: text fields (each given once) and file parts
    (their bytes, each at most ``SFUMATO_MAX_UPLOAD_BYTES``), by field name."""

    texts: dict[str, str]
    files: dict[str, list[bytes]]


@dataclass(frozen=True)
class EditRequest:
    """What an edits or variations form asks for: the Sfumato request, and how to answer."""

    request: ImageRequest
    response_format: str
    size: str | None


def _validated(model: type[_Model], fields: dict[str, Any]) -> _Model:
    """``fields`` as ``model``; its first error as a 422 naming the field."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = param_path(error.get("loc", ()))
        raise InvalidRequest(f"{param}: {error.get('msg', 'invalid value')}", param=param) from None


def _form_fields(texts: dict[str, str]) -> OpenAIImageForm:
    """The form's text fields, checked; JSON text for the structured Sfumato fields."""
    for name in texts:
        if "[" in name:  # the openai package's encoding of a nested extra_body value
            base = name.split("[", 1)[0]
            raise InvalidRequest(
                f"{name}: nested form fields are not read; send {base} as one field of JSON text",
                param=base,
            )
    values: dict[str, Any] = dict(texts)
    for name in _JSON_FIELDS & values.keys():
        try:
            values[name] = json.loads(values[name])
        except json.JSONDecodeError:
            raise InvalidRequest(f"{name} must be JSON text in a form, e.g. {name}=[...]", param=name) from None
    return _validated(OpenAIImageForm, values)


def _one_file(form: MultipartForm, field: str, *, required: bool) -> bytes | None:
    """The one file sent as ``field`` (``image`` also as ``image[]``); 422 naming it otherwise."""
    names = ("image", "image[]") if field == "image" else (field,)
    parts = [part for name in names for part in form.files.get(name, [])]
    if len(parts) > 1:
        raise InvalidRequest(f"{field}: {len(parts)} files were sent; Sfumato takes exactly one", param=field)
    if not parts:
        if required:
            raise InvalidRequest(f"{field} is required: the picture as a file part of the form", param=field)
        return None
    return parts[0]


def _checked_upload(data: bytes, field: str, settings: Settings) -> tuple[str, UploadInfo]:
    """The upload as base64, checked like every upload (size, format, declared pixels)."""
    b64 = base64.b64encode(data).decode()
    info = inspect_upload(b64, field=field, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels)
    return b64, info


def white_repaint_mask(data: bytes) -> bytes | None:
    """An OpenAI mask (transparent = edit) as Sfumato's (white = repaint), PNG-encoded; None
    when ``data`` is already a plain mask (no transparent pixel: its white is repainted).

    The caller has checked the declared dimensions against our pixel limit, so decoding is
    bounded; Pillow's own (higher) bomb limit is silenced. A mask whose pixels cannot be
    decoded (truncated, corrupt) is a 422 naming ``mask``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
                if img.mode not in ("RGBA", "LA", "PA", "La", "RGBa") and "transparency" not in img.info:
                    return None  # no alpha channel: a black/white mask as it is
                rgba = img if img.mode in ("RGBA", "LA") else img.convert("RGBA")
                alpha = rgba.getchannel("A")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        raise InvalidRequest("mask could not be decoded as an image (truncated or corrupt)", param="mask") from None
    if not any(alpha.histogram()[:_ALPHA_EDITED_BELOW]):
        return None  # opaque everywhere: read its luminance (white = repaint)
    mask = alpha.point(lambda a: 255 if a < _ALPHA_EDITED_BELOW else 0)
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


def auto_size(width: int, height: int, spec: ModelSpec, settings: Settings) -> tuple[int, int] | None:
    """The output size for an image of ``width`` x ``height`` when ``size`` is absent or 'auto':
    the image's own, scaled down (aspect kept) to the model's largest side and
    ``SFUMATO_MAX_PIXELS``, each side rounded down to a multiple of 8 and at least the smallest
    size. None for a model with a fixed list of sizes (its default size applies)."""
    if spec.sizes:
        return None
    minimum = settings.min_size if spec.min_size is None else min(spec.min_size, settings.min_size)
    minimum = -(-minimum // 8) * 8
    scale = min(1.0, spec.max_size / max(width, height), math.sqrt(settings.max_pixels / (width * height)))
    return max(minimum, int(width * scale) // 8 * 8), max(minimum, int(height * scale) // 8 * 8)


def _sfumato_fields(
    form: OpenAIImageForm, prompt: str, image: tuple[str, UploadInfo], settings: Settings
) -> dict[str, Any]:
    """The ImageRequest fields every form shares: extras, prompt, n, model, size, format."""
    if form.stream or (form.partial_images or 0) > 0:
        param = "stream" if form.stream else "partial_images"
        raise InvalidRequest(
            f"{param}: streaming partial images is not supported; use GET /v1/images/{{id}}/events", param=param
        )
    model = form.model
    if model is not None and model.startswith(OPENAI_MODEL_PREFIXES):
        model = None
    fields: dict[str, Any] = dict(form.model_extra or {})
    if form.size is not None and form.size != "auto":
        fields = {**_size(form.size), **fields}
    elif not {"width", "height"} & fields.keys():
        fitted = auto_size(image[1].width, image[1].height, resolve_model(settings, model), settings)
        if fitted is not None:
            fields.update(width=fitted[0], height=fitted[1])
    fields.update(prompt=prompt, n=form.n, model=model, image=image[0])
    if form.output_format is not None:
        fields["output_format"] = form.output_format
    return fields


def _check_file_fields(form: MultipartForm, allowed: tuple[str, ...]) -> None:
    """Files only where the endpoint takes them, and those fields never as text."""
    for name in form.files:
        if name not in allowed:
            param = name.removesuffix("[]")
            raise InvalidRequest(
                f"{name}: this endpoint takes no such file; its files: {', '.join(allowed)}", param=param
            )
    for name in _FILE_FIELDS:
        if name in form.texts:
            param = name.removesuffix("[]")
            if name not in allowed:
                raise InvalidRequest(f"{name}: this endpoint takes no {param}", param=param)
            raise InvalidRequest(
                f"{param} must be a file part of the form (a PNG, JPEG or WebP file), not text", param=param
            )


def edit_request(form: MultipartForm, settings: Settings) -> EditRequest:
    """``POST /v1/images/edits``: inpainting with a mask, img2img without (blocking: decodes an
    alpha mask)."""
    _check_file_fields(form, _FILE_FIELDS)
    fields = _form_fields(form.texts)
    if fields.prompt is None:
        raise InvalidRequest("prompt is required: what the edited image should show", param="prompt")
    image_data = _one_file(form, "image", required=True)
    assert image_data is not None
    image = _checked_upload(image_data, "image", settings)
    request = _sfumato_fields(fields, fields.prompt, image, settings)
    mask_data = _one_file(form, "mask", required=False)
    if mask_data is not None:
        mask_b64, mask_info = _checked_upload(mask_data, "mask", settings)
        if (mask_info.width, mask_info.height) != (image[1].width, image[1].height):
            raise InvalidRequest(
                f"mask is {mask_info.width}x{mask_info.height}; it must be the size of image "
                f"({image[1].width}x{image[1].height})",
                param="mask",
            )
        converted = white_repaint_mask(mask_data)
        request["mask"] = mask_b64 if converted is None else base64.b64encode(converted).decode()
    return EditRequest(_validated(ImageRequest, request), fields.response_format or "url", fields.size)


def variation_request(form: MultipartForm, settings: Settings) -> EditRequest:
    """``POST /v1/images/variations``: img2img of the image at :data:`VARIATION_STRENGTH`."""
    _check_file_fields(form, ("image",))
    fields = _form_fields(form.texts)
    image_data = _one_file(form, "image", required=True)
    assert image_data is not None
    image = _checked_upload(image_data, "image", settings)
    request = _sfumato_fields(fields, fields.prompt or VARIATION_PROMPT, image, settings)
    request.setdefault("strength", VARIATION_STRENGTH)
    return EditRequest(_validated(ImageRequest, request), fields.response_format or "url", fields.size)
