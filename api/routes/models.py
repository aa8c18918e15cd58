"""``/v1/models``: what this deployment serves, with defaults, limits and live workers.

One entry per registry model (SFUMATO_MODELS_FILE; else the one SFUMATO_MODEL): its public spec
(no local paths), its own LoRAs, embedding tokens, ControlNet names, whether it has a refiner,
how many live workers serve it (0: requests get 503 no_worker, or wait with
``waiting_for: no_worker`` when the operator scales from zero), and ``queued``: its jobs waiting
per priority class (``interactive``, ``standard``, ``batch``; workers take them in that order,
see docs/operations/priorities.md). A model that knows only a few
words (the built-in ``shapes`` model) also carries ``prompt_guide``: its colours, shapes, sizes,
positions, phrasings and example prompts (core/prompt_guide.py); other models have no such key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import Reader, Services
from api.errors import AUTHENTICATED, documented
from core import controlnets
from core.jobs import redis_errors
from core.loras import available_loras
from core.models import served_models
from core.presence import live_workers
from core.queue_metrics import queue_depths
from core.scheduler_names import SCHEDULER_DISPLAY_NAMES

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", responses=documented(*AUTHENTICATED))
def list_models(services: Services, _reader: Reader) -> dict[str, Any]:
    settings = services.settings
    data = []
    with redis_errors():
        for spec in served_models(settings).values():
            entry = spec.public()
            entry["loras"] = available_loras(settings, spec)  # each model its own folder
            entry["workers"] = live_workers(services.jobs.connection, settings, spec.id)
            entry["queued"] = queue_depths(services.jobs.connection, settings, spec.id)
            data.append(entry)
    limits = {
        "min_size": settings.min_size,
        "max_pixels": settings.max_pixels,
        "max_steps": settings.max_steps,
        "max_n": settings.max_n,
        "guidance_scale": [settings.min_guidance, settings.max_guidance],
        "max_clip_skip": settings.max_clip_skip,
        "max_prompt_chars": settings.max_prompt_chars,
        "max_upload_bytes": settings.max_upload_bytes,
        "max_loras": settings.max_loras,
        "lora_scale": [settings.lora_min_scale, settings.lora_max_scale],
        "max_controlnets": settings.max_controlnets,
        "controlnet_scale": [controlnets.MIN_SCALE, controlnets.MAX_SCALE],
    }
    return {
        "data": data,
        "schedulers": SCHEDULER_DISPLAY_NAMES,
        "limits": limits,
        "queue_without_workers": settings.resolved_queue_without_workers,
    }
