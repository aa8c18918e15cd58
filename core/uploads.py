"""Checks on uploaded images (img2img init image, inpainting mask) before anything is queued.

Only the header is parsed here, by Pillow's PNG, JPEG and WebP readers and no other: their
constructors read the declared format and dimensions without decoding pixels. A decompression
bomb (small file, huge declared size) is therefore refused, naming our limit, before it can
allocate anything. ``Image.open`` is not used for this: it applies Pillow's own, much higher
bomb limit first and raises an error that does not say which limit applies here.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError, WebPImagePlugin

from core.errors import InvalidRequest

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")

#: Header readers of the allowed formats; constructing one parses the header only.
_READERS: tuple[type[ImageFile.ImageFile], ...] = (
    PngImagePlugin.PngImageFile,
    JpegImagePlugin.JpegImageFile,
    WebPImagePlugin.WebPImageFile,
)


@dataclass(frozen=True)
class UploadInfo:
    format: str
    width: int
    height: int
    nbytes: int


def _strip_data_url(text: str) -> str:
    """Accept both raw base64 and ``data:image/png;base64,...``."""
    if text.startswith("data:") and "," in text:
        return text.split(",", 1)[1]
    return text


def decode_base64_image(text: str) -> bytes:
    """The raw bytes of a base64 (or data-URL) image; no size check (see inspect_upload)."""
    return base64.b64decode(_strip_data_url(text), validate=True)


def _read_header(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) declared by a PNG, JPEG or WebP header; None for anything else."""
    for reader in _READERS:
        try:
            with reader(io.BytesIO(data)) as img:
                return img.format or "", img.size[0], img.size[1]
        except (SyntaxError, OSError, ValueError, EOFError):
            continue  # not this format (or a broken header): try the next reader
    return None


def _describe_other(data: bytes) -> str:
    """What the caller sent instead, for the error message: "has format GIF" or unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format:
                    return f"has format {img.format}"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        pass
    return "is not a readable image"


def inspect_upload(text: str, *, field: str, max_bytes: int, max_pixels: int) -> UploadInfo:
    """Validate a base64 upload's size, format and declared dimensions without decoding it.

    Raises :class:`InvalidRequest` naming ``field``, the value and the limit.
    """
    raw_b64 = _strip_data_url(text)
    # base64 inflates by 4/3: refuse obviously oversized payloads before decoding them.
    if len(raw_b64) > (max_bytes * 4) // 3 + 4:
        raise InvalidRequest(f"{field} is larger than the limit of {max_bytes} bytes", param=field)
    try:
        data = base64.b64decode(raw_b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{field} is not valid base64", param=field) from None
    if len(data) > max_bytes:
        raise InvalidRequest(f"{field} is {len(data)} bytes; the limit is {max_bytes} bytes", param=field)
    header = _read_header(data)
    if header is None:
        raise InvalidRequest(f"{field} {_describe_other(data)}; allowed formats: PNG, JPEG, WebP", param=field)
    fmt, width, height = header
    if width * height > max_pixels:
        raise InvalidRequest(
            f"{field} declares {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            param=field,
        )
    return UploadInfo(format=fmt, width=width, height=height, nbytes=len(data))
