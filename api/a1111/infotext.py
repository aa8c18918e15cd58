"""A1111 infotext: read it from an image (``POST /png-info``) and parse it into fields.

The infotext is the ``parameters`` text the worker writes into every image
(worker/runtime/encoding.py): the prompt, a ``Negative prompt:`` line, then one line of
``Key: value`` pairs, values with ``,``/``:``/``"`` JSON-quoted. PNGs carry it in a text chunk,
JPEG and WebP in EXIF UserComment (A1111 reads both places, and so does this).

An uploaded image is checked like any upload (size, format, declared pixels: core/uploads.py)
before Pillow decodes anything, so png-info is no way around the upload limits.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from PIL import Image
from PIL.ExifTags import IFD, Base

from core.uploads import decode_base64_image, inspect_upload

#: A1111's ``re_param``: ``Key: value`` with a JSON-quoted or comma-free value.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"
_EXIF_PREFIXES = (b"UNICODE\x00", b"ASCII\x00\x00\x00", b"\x00" * 8)
#: Text entries that are not for people (Pillow also puts binary profiles in ``info``).
_SKIPPED_ITEMS = frozenset({"parameters", "exif", "icc_profile", "dpi", "transparency", "gamma"})


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def parse_infotext(text: str) -> dict[str, Any]:
    """The fields of an infotext, keyed as A1111's ``parse_generation_parameters`` keys them:
    ``Prompt``, ``Negative prompt``, each ``Key`` of the last line, ``Size-1``/``Size-2``."""
    *lines, last = text.strip().split("\n") if text.strip() else [""]
    pairs = _PAIR.findall(last)
    if len(pairs) < 3:  # not a parameters line: part of the prompt (A1111's rule)
        lines.append(last)
        pairs = []
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE) :].lstrip()
        (negative if in_negative else prompt).append(line)
    fields: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs:
        value = _unquote(value.strip())
        size = _SIZE.match(value) if key == "Size" else None
        if size:
            fields["Size-1"], fields["Size-2"] = size.group(1), size.group(2)
        else:
            fields[key] = value
    return fields


def _exif_comment(image: Image.Image) -> str | None:
    raw = image.getexif().get_ifd(IFD.Exif).get(Base.UserComment)
    if isinstance(raw, str):
        return raw or None
    if not isinstance(raw, bytes):
        return None
    for prefix in _EXIF_PREFIXES:
        if raw.startswith(prefix):
            body = raw[len(prefix) :]
            encoding = "utf-16-be" if prefix.startswith(b"UNICODE") else "latin-1"
            return body.decode(encoding, errors="replace").rstrip("\x00") or None
    return raw.decode("utf-8", errors="replace") or None


def read_png_info(image_b64: str, *, max_bytes: int, max_pixels: int) -> dict[str, Any]:
    """A1111's ``/png-info`` answer: ``info`` (the infotext, "" if none), ``items`` (the other
    text entries) and ``parameters`` (the infotext parsed)."""
    inspect_upload(image_b64, field="image", max_bytes=max_bytes, max_pixels=max_pixels)
    with Image.open(io.BytesIO(decode_base64_image(image_b64))) as image:
        image.load()  # text chunks after the image data are read here (size checked above)
        info = image.info
        text = info.get("parameters")
        if not isinstance(text, str):
            text = _exif_comment(image) or ""
        items = {k: v for k, v in info.items() if isinstance(v, str) and k not in _SKIPPED_ITEMS}
    return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}
