"""Shared helpers for tests that drive the engine directly: settings, payloads, uploads."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.config import Settings
from core.schemas import JobPayload


def engine_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an engine on CPU in float32 with SDPA: the reference configuration."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "model": "tiny",
        "model_id": None,
        "device": "cpu",
        "dtype": "float32",
        "attention": "sdpa",
        "torch_threads": None,
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
