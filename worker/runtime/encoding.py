"""Generated image -> file bytes (PNG, JPEG or WebP) that carry how it was made.

PNGs get the AUTOMATIC1111-style ``parameters`` text chunk, which A1111, ComfyUI, Civitai
and most image browsers read back ("PNG Info"), plus a ``sfumato`` chunk with the same facts
as JSON for machines. JPEG and WebP carry the ``parameters`` text in EXIF UserComment, where
A1111 puts it for those formats.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from PIL import Image, PngImagePlugin
from PIL.ExifTags import IFD, Base

from core.lora_tags import extract_lora_tags
from core.scheduler_names import SCHEDULER_DISPLAY_NAMES
from core.schemas import JobPayload, OutputFormat
from core.storage import CONTENT_TYPES

JPEG_QUALITY = 92
WEBP_QUALITY = 90
#: EXIF UserComment character-code prefix for UTF-16 text (what A1111/piexif write and read).
_EXIF_UNICODE = b"UNICODE\x00"


@dataclass(frozen=True)
class Provenance:
    """The files behind an image, for the infotext entries A1111 writes (worker/runtime/
    file_hashes.py computes the hashes). Each part is optional: a diffusers folder has no
    model hash, a model without a refiner no refiner name."""

    model_hash: str | None = None
    #: (LoRA name, short hash) of each LoRA the job ran with, in the payload's order.
    lora_hashes: tuple[tuple[str, str], ...] = ()
    #: The refiner's name (its folder or file name) and, for a single file, its short hash.
    refiner: str | None = None
    refiner_hash: str | None = None


def content_type_for(fmt: OutputFormat) -> str:
    """The HTTP Content-Type of an output format."""
    return CONTENT_TYPES[fmt]


def _value(text: str) -> str:
    # A1111 JSON-quotes values that would break its "key: value, key: value" line.
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def _prompt_line(payload: JobPayload) -> str:
    """The prompt as written (its ``<lora:>`` tags where the client put them), then a tag for
    each LoRA of the ``loras`` field, so that pasting the text into A1111 asks for all of them."""
    written = payload.prompt if payload.prompt_as_written is None else payload.prompt_as_written
    in_text = {lora.name for lora in extract_lora_tags(written).loras} if payload.prompt_as_written else set()
    tags = "".join(f" <lora:{lora.name}:{lora.scale:g}>" for lora in payload.loras if lora.name not in in_text)
    return written + tags


def _refiner_title(provenance: Provenance) -> str | None:
    if provenance.refiner is None:
        return None
    # A1111 titles a checkpoint "name [short hash]".
    return provenance.refiner + (f" [{provenance.refiner_hash}]" if provenance.refiner_hash else "")


def parameters_text(payload: JobPayload, seed: int, model_name: str, provenance: Provenance | None = None) -> str:
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
    ]
    provenance = provenance or Provenance()
    if provenance.model_hash:
        fields.append(f"Model hash: {provenance.model_hash}")
    fields.append(f"Model: {_value(model_name)}")
    if payload.mode != "txt2img" and payload.strength is not None:
        fields.append(f"Denoising strength: {payload.strength:g}")
    if payload.refiner is not None:  # a refined image must not read like an unrefined one
        title = _refiner_title(provenance)
        if title:
            fields.append(f"Refiner: {_value(title)}")
        fields.append(f"Refiner switch at: {payload.refiner.switch_at:g}")
    for i, unit in enumerate(payload.controlnet):  # A1111's ControlNet extension writes these
        settings = (
            f"Module: {unit.preprocess}, Model: {unit.name}, Weight: {unit.scale:g}, "
            f"Guidance Start: {unit.start:g}, Guidance End: {unit.end:g}"
        )
        fields.append(f"ControlNet {i}: {_value(settings)}")
    if provenance.lora_hashes:
        # A1111 (extra_networks_lora.py): 'Lora hashes: "name: hash, name: hash"', with ':' and ','
        # dropped from names.
        pairs = ", ".join(f"{name.replace(':', '').replace(',', '')}: {h}" for name, h in provenance.lora_hashes)
        fields.append(f"Lora hashes: {_value(pairs)}")
    fields += [f"Clip skip: {payload.clip_skip + 1}", f"Sfumato job: {_value(payload.job_id)}"]
    lines = [_prompt_line(payload)]
    if payload.negative_prompt:
        lines.append(f"Negative prompt: {payload.negative_prompt}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def _sfumato_json(payload: JobPayload, index: int, seed: int, model_name: str, provenance: Provenance) -> str:
    refiner = None
    if payload.refiner is not None:
        refiner = {"model": provenance.refiner, "hash": provenance.refiner_hash, "switch_at": payload.refiner.switch_at}
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
            "model_hash": provenance.model_hash,
            "loras": [{"name": lora.name, "scale": lora.scale} for lora in payload.loras],
            "lora_hashes": dict(provenance.lora_hashes),
            "refiner": refiner,
            # The settings only: a control image is the client's upload, not a fact about the output.
            "controlnet": [unit.model_dump(exclude={"image_b64"}) for unit in payload.controlnet],
        },
        separators=(",", ":"),
    )


def _exif_with_comment(text: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(IFD.Exif)[Base.UserComment] = _EXIF_UNICODE + text.encode("utf-16-be")
    return exif.tobytes()


def encode_image(
    image: Image.Image,
    payload: JobPayload,
    index: int,
    seed: int,
    model_name: str,
    provenance: Provenance | None = None,
) -> bytes:
    """Image ``index`` of ``payload`` (made with ``seed``) as bytes in ``payload.output_format``."""
    provenance = provenance or Provenance()
    params = parameters_text(payload, seed, model_name, provenance)
    buffer = io.BytesIO()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if payload.output_format == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", params)  # tEXt; Pillow switches to iTXt beyond Latin-1
        info.add_text("sfumato", _sfumato_json(payload, index, seed, model_name, provenance))
        rgb.save(buffer, format="PNG", pnginfo=info)
    elif payload.output_format == "jpeg":
        rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY, exif=_exif_with_comment(params))
    else:
        rgb.save(buffer, format="WEBP", quality=WEBP_QUALITY, exif=_exif_with_comment(params))
    return buffer.getvalue()
