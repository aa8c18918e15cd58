"""Generated image -> file bytes (PNG, JPEG or WebP) that carry how it was made.

PNGs get the AUTOMATIC1111-style ``parameters`` text chunk, which A1111, ComfyUI, Civitai
and most image browsers read back ("PNG Info"), plus a ``sfumato`` chunk with the same facts
as JSON for machines. JPEG and WebP carry the ``parameters`` text in EXIF UserComment, where
A1111 puts it for those formats.
"""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin
from PIL.ExifTags import IFD, Base

from core.scheduler_names import SCHEDULER_DISPLAY_NAMES
from core.schemas import JobPayload, OutputFormat
from core.storage import CONTENT_TYPES

JPEG_QUALITY = 92
WEBP_QUALITY = 90
#: EXIF UserComment character-code prefix for UTF-16 text (what A1111/piexif write and read).
_EXIF_UNICODE = b"UNICODE\x00"


def content_type_for(fmt: OutputFormat) -> str:
    """The HTTP Content-Type of an output format."""
    return CONTENT_TYPES[fmt]


def _value(text: str) -> str:
    # A1111 JSON-quotes values that would break its "key: value, key: value" line.
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def parameters_text(payload: JobPayload, seed: int, model_name: str) -> str:
    """The A1111 ``parameters`` string for one image of ``payload`` made with ``seed``.

    Like A1111, the "Negative prompt" line is left out when there is none. ``Clip skip`` uses
    A1111's numbering (1 = no skip), i.e. ``payload.clip_skip + 1``. LoRAs are appended to the
    prompt as A1111's ``<lora:name:scale>`` tags, so pasting the text into A1111 asks for them.
    """
    sampler = SCHEDULER_DISPLAY_NAMES.get(payload.scheduler, payload.scheduler)
    fields = [
        f"Steps: {payload.steps}",
        f"Sampler: {_value(sampler)}",
        f"CFG scale: {payload.guidance_scale:g}",
        f"Seed: {seed}",
        f"Size: {payload.width}x{payload.height}",
        f"Model: {_value(model_name)}",
    ]
    if payload.mode != "txt2img" and payload.strength is not None:
        fields.append(f"Denoising strength: {payload.strength:g}")
    for i, unit in enumerate(payload.controlnet):  # A1111's ControlNet extension writes these
        settings = (
            f"Module: {unit.preprocess}, Model: {unit.name}, Weight: {unit.scale:g}, "
            f"Guidance Start: {unit.start:g}, Guidance End: {unit.end:g}"
        )
        fields.append(f"ControlNet {i}: {_value(settings)}")
    fields += [f"Clip skip: {payload.clip_skip + 1}", f"Sfumato job: {_value(payload.job_id)}"]
    tags = "".join(f" <lora:{lora.name}:{lora.scale:g}>" for lora in payload.loras)
    lines = [payload.prompt + tags]
    if payload.negative_prompt:
        lines.append(f"Negative prompt: {payload.negative_prompt}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def _sfumato_json(payload: JobPayload, index: int, seed: int, model_name: str) -> str:
    return json.dumps(
        {
            "job_id": payload.job_id,
            "index": index,
            "seed": seed,
            "model": model_name,
            "mode": payload.mode,
            "scheduler": payload.scheduler,
            "steps": payload.steps,
            "guidance_scale": payload.guidance_scale,
            "width": payload.width,
            "height": payload.height,
            "clip_skip": payload.clip_skip,
            "strength": payload.strength,
            "loras": [{"name": lora.name, "scale": lora.scale} for lora in payload.loras],
            # The settings only: a control image is the client's upload, not a fact about the output.
            "controlnet": [unit.model_dump(exclude={"image_b64"}) for unit in payload.controlnet],
        },
        separators=(",", ":"),
    )


def _exif_with_comment(text: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(IFD.Exif)[Base.UserComment] = _EXIF_UNICODE + text.encode("utf-16-be")
    return exif.tobytes()


def encode_image(image: Image.Image, payload: JobPayload, index: int, seed: int, model_name: str) -> bytes:
    """Image ``index`` of ``payload`` (made with ``seed``) as bytes in ``payload.output_format``."""
    params = parameters_text(payload, seed, model_name)
    buffer = io.BytesIO()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if payload.output_format == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", params)  # tEXt; Pillow switches to iTXt beyond Latin-1
        info.add_text("sfumato", _sfumato_json(payload, index, seed, model_name))
        rgb.save(buffer, format="PNG", pnginfo=info)
    elif payload.output_format == "jpeg":
        rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY, exif=_exif_with_comment(params))
    else:
        rgb.save(buffer, format="WEBP", quality=WEBP_QUALITY, exif=_exif_with_comment(params))
    return buffer.getvalue()
