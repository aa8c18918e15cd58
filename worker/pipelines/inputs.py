"""Init images and masks for img2img and inpainting, decoded from a queued payload.

The API has already checked the upload's size, format and declared dimensions
(``core.uploads.inspect_upload``); here the pixels are decoded and brought to the size the
job asked for, so every image in a batch has the same shape. The job is already queued, so a
broken upload fails it with :class:`GenerationFailed` (``InvalidRequest`` means "refused
before enqueueing"), naming the field in ``param``.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

from core.errors import GenerationFailed
from core.uploads import decode_base64_image


def _open(b64: str, field: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(decode_base64_image(b64))) as img:
            img.load()
            # Phones store rotation in EXIF; users expect the picture as they see it.
            return ImageOps.exif_transpose(img)
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError, EOFError... on bad data
        raise GenerationFailed(f"{field} could not be decoded as an image", param=field) from None


def _fit(img: Image.Image, width: int, height: int) -> Image.Image:
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.LANCZOS)


def init_image(b64: str | None, width: int, height: int) -> Image.Image:
    """The img2img / inpainting start image as RGB, resized to ``width`` x ``height``."""
    if not b64:
        raise GenerationFailed("img2img and inpainting need an image", param="image")
    return _fit(_open(b64, "image").convert("RGB"), width, height)


def mask_image(b64: str | None, width: int, height: int) -> Image.Image:
    """The inpainting mask as 8-bit grey (white = repaint), resized to ``width`` x ``height``.

    diffusers binarises it at 50 % grey, so soft edges from the resize do not leak.
    """
    if not b64:
        raise GenerationFailed("inpainting needs a mask", param="mask")
    return _fit(_open(b64, "mask").convert("L"), width, height)


def control_image(b64: str, field: str, width: int, height: int) -> Image.Image:
    """A ControlNet control image as RGB, resized to ``width`` x ``height`` (``field`` names it
    in errors, e.g. ``controlnet[0].image``)."""
    return _fit(_open(b64, field).convert("RGB"), width, height)
