"""Shared helpers for tests that drive the engine directly: settings, payloads, uploads."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.config import Settings
from core.schemas import JobPayload

#: ``make test-compiled`` sets this to a ``torch.compile`` backend (``eager``): every engine the
#: tests build through :func:`engine_settings` then runs the compiled fast path, so the existing
#: engine suites show that compilation changes nothing they assert (issue 21). Not an
#: ``SFUMATO_*`` name: tests/conftest.py strips those from the environment before any test runs.
COMPILE_VARIABLE = "TEST_SFUMATO_COMPILE"


def compiled_defaults() -> dict[str, Any]:
    """The compile settings :data:`COMPILE_VARIABLE` asks for; none when it is unset or empty.

    Buckets 1 and 4 keep warm-up to four UNet graphs; the ``eager`` backend traces, guards and
    pads for real without inductor's C++ compile (about a minute per graph on two cores)."""
    backend = os.environ.get(COMPILE_VARIABLE, "").strip()
    if not backend:
        return {}
    return {"compile": "on", "compile_backend": backend, "compile_buckets": (1, 4)}


#: The float32 bound of an image alone against co-batched (the batching issue's 1e-5), and under
#: :data:`COMPILE_VARIABLE` twice that: the fast path lays the UNet's convolution weights out
#: channels_last, whose kernels round a little differently per batch size. Measured on the tiny
#: model (1-image img2img, 2-core Intel Xeon): 1.25e-5 with LMS, 1.01e-5 with DDIM, and exactly
#: the same with an uncompiled engine holding the same channels_last weights (7.0e-6 with ordinary
#: weights). The 8-bit bound (one level on at most 0.1% of values) is the same either way.
FLOAT_BOUND = 1e-5
COMPILED_FLOAT_BOUND = 2e-5


def float_bound() -> float:
    """The float32 alone-vs-co-batched bound for engines built by :func:`engine_settings`."""
    return COMPILED_FLOAT_BOUND if compiled_defaults() else FLOAT_BOUND


def engine_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an engine on CPU in float32 with SDPA: the reference configuration
    (compiled when :data:`COMPILE_VARIABLE` is set; ``overrides`` win over it)."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "model": "tiny",
        "model_id": None,
        "device": "cpu",
        "dtype": "float32",
        "attention": "sdpa",
        "torch_threads": None,
        **compiled_defaults(),
    }
    values.update(overrides)
    return Settings(**values)


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def noise_image(seed: int, size: tuple[int, int] = (80, 72)) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return b64(Image.fromarray(pixels))


def mask_b64() -> str:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return b64(mask)


def payload(**fields: Any) -> JobPayload:
    """A valid payload for the tiny model; img2img/inpaint get an init image (and mask)."""
    values: dict[str, Any] = {
        "job_id": "job-1",
        "tenant": "t1",
        "model": "tiny",
        "mode": "txt2img",
        "prompt": "a photo of a cat",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 3,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "seed": 42,
        "n": 1,
        "clip_skip": 0,
        "output_format": "png",
        "created_at": 0.0,
    }
    if fields.get("mode") in ("img2img", "inpaint"):
        values.update(image_b64=noise_image(0), strength=0.7)
    if fields.get("mode") == "inpaint":
        values["mask_b64"] = mask_b64()
    values.update(fields)
    return JobPayload(**values)
