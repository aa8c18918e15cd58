"""Request bodies at the size limits, for the body-limit tests and ``bench/body_memory.py``.

The largest valid request carries every upload field at ``SFUMATO_MAX_UPLOAD_BYTES``: a real
PNG header (the API reads headers only, never pixels) followed by random padding, so that the
bytes compress like an image's would when the job is queued.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

from core.config import Settings
from tests.support.bombs import png_header_only

#: The ControlNets the registry of :func:`controlnet_registry` offers (no weights: the API
#: only checks names; nothing here runs a worker).
CONTROLNETS = ("edges", "depth")


def padded_png(nbytes: int, seed: int = 0) -> bytes:
    """``nbytes`` that pass the upload checks: a 512 x 512 PNG header, then random padding."""
    head = png_header_only(512, 512)
    return head + random.Random(seed).randbytes(nbytes - len(head))


def max_size_body(settings: Settings) -> bytes:
    """The largest valid ``POST /v1/images`` body under ``settings``: an init image, a mask and
    ``max_controlnets`` control images, each exactly ``max_upload_bytes`` decoded."""
    image = base64.b64encode(padded_png(settings.max_upload_bytes)).decode()
    units = [{"name": CONTROLNETS[i % 2], "image": image, "scale": 0.5} for i in range(settings.max_controlnets)]
    body = {"prompt": "a red circle", "steps": 2, "image": image, "mask": image, "controlnet": units}
    return json.dumps(body).encode()


def controlnet_registry(folder: Path) -> Path:
    """A models file: the tiny model with the :data:`CONTROLNETS`."""
    path = folder / "models.toml"
    lines = ["[[models]]", 'id = "tiny"', 'source = "tiny"', 'family = "tiny"']
    for name in CONTROLNETS:
        lines += ["[[models.controlnets]]", f'name = "{name}"', f'source = "{folder / name}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def padded_json(size: int, fields: dict[str, object]) -> bytes:
    """``fields`` as JSON, padded with spaces to exactly ``size`` bytes."""
    text = json.dumps(fields).encode()
    if len(text) > size:
        raise ValueError(f"{fields} does not fit in {size} bytes")
    return text[:-1] + b" " * (size - len(text)) + b"}"
