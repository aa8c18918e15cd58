"""Shared helpers for SDXL tests: the built-in tiny SDXL model and its refiner, on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import Settings
from core.schemas import JobPayload, RefinerSettings
from tests.support.engine import engine_settings, payload
from worker.pipelines.sdxl import TINY_SDXL, TINY_SDXL_REFINER

#: The model id clients use for the built-in tiny SDXL (SFUMATO_MODEL=tiny-sdxl).
MODEL = "tiny-sdxl"


def sdxl_settings(data_dir: Path, *, refiner: bool = True, **overrides: Any) -> Settings:
    """Engine settings for the tiny SDXL (CPU, float32, SDPA), with its tiny refiner by default."""
    return engine_settings(data_dir, model=TINY_SDXL, refiner=TINY_SDXL_REFINER if refiner else None, **overrides)


def sdxl_payload(switch_at: float | None = None, **fields: Any) -> JobPayload:
    """A valid tiny-SDXL payload (64 px, 6 steps, guidance 5); ``switch_at`` asks for the refiner."""
    values: dict[str, Any] = {"model": MODEL, "steps": 6, "guidance_scale": 5.0}
    if switch_at is not None:
        values["refiner"] = RefinerSettings(switch_at=switch_at)
    values.update(fields)
    return payload(**values)
