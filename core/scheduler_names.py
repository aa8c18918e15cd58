"""Scheduler (sampler) names clients may use, and their A1111 spellings.

Torch-free on purpose: the API validates names before enqueueing; ``worker/pipelines/schedulers.py``
maps the canonical names to diffusers classes.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from core.errors import UnknownChoice

#: canonical name -> the name AUTOMATIC1111 shows (also written into PNG ``parameters``).
SCHEDULER_DISPLAY_NAMES: dict[str, str] = {
    "ddim": "DDIM",
    "ddpm": "DDPM",
    "pndm": "PLMS",
    "lms": "LMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "unipc": "UniPC",
    # Few-step samplers for consistency-distilled models (LCM, LCM-LoRA; TCD-LoRA, Hyper-SD).
    "lcm": "LCM",
    "tcd": "TCD",
}

#: Schedulers that sample a fixed distillation schedule and cannot run more steps than it has:
#: diffusers' LCMScheduler and TCDScheduler pick their timesteps from ``original_inference_steps``
#: (diffusers' default, 50) and raise past it. The API refuses more steps up front.
SCHEDULER_MAX_STEPS: dict[str, int] = {"lcm": 50, "tcd": 50}

#: How a scheduler spreads its inference timesteps over the training schedule (diffusers'
#: ``timestep_spacing``). ``trailing`` starts at the last training timestep (pure noise), which
#: models distilled for 1-8 steps (SDXL-Turbo, Lightning, Hyper-SD) were trained to expect.
TimestepSpacing = Literal["leading", "linspace", "trailing"]
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)

#: extra spellings, after folding (lower case, runs of space/-/. become "_", "+" becomes "p").
_ALIASES: dict[str, str] = {
    "plms": "pndm",
    "euler_ancestral": "euler_a",
    "eulera": "euler_a",
    "k_euler": "euler",
    "k_euler_a": "euler_a",
    "k_lms": "lms",
    "k_heun": "heun",
    "dpm_2m": "dpmpp_2m",
    "dpmpp2m": "dpmpp_2m",
    "dpmpp_2m_k": "dpmpp_2m_karras",
    "dpmpp2m_karras": "dpmpp_2m_karras",
    "uni_pc": "unipc",
}


def _fold(name: str) -> str:
    folded = name.strip().lower().replace("+", "p")
    return re.sub(r"[\s\-.]+", "_", folded)


def canonical_scheduler(name: str) -> str:
    """Return the canonical name for ``name`` (``"DPM++ 2M Karras"`` -> ``dpmpp_2m_karras``).

    Raises :class:`UnknownChoice` naming the valid choices.
    """
    folded = _fold(name)
    if folded in SCHEDULER_DISPLAY_NAMES:
        return folded
    if folded in _ALIASES:
        return _ALIASES[folded]
    valid = ", ".join(SCHEDULER_DISPLAY_NAMES)
    raise UnknownChoice(f"unknown scheduler {name!r}; valid schedulers: {valid}", param="scheduler")


def scheduler_max_steps(name: str) -> int | None:
    """The most steps the canonical scheduler ``name`` can run; None: no limit of its own."""
    return SCHEDULER_MAX_STEPS.get(name)
