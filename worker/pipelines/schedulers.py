"""Canonical scheduler name -> a fresh diffusers scheduler.

Schedulers hold per-run state (timesteps, step index, multistep history), so one object must
never serve two calls: :func:`make_scheduler` builds a new one each time from the resident
scheduler's config, which carries the model's training noise schedule (betas, prediction
type). Names are validated by the API (``core.scheduler_names``); this module only maps them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch

# Concrete module paths: through diffusers' lazy __init__, mypy sees dummy placeholder classes.
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from core.errors import UnknownChoice
from core.scheduler_names import SCHEDULER_DISPLAY_NAMES


class Scheduler(Protocol):
    """What the engine and tests use of a diffusers scheduler (SchedulerMixin + ConfigMixin)."""

    config: Any
    timesteps: torch.Tensor

    def set_timesteps(self, num_inference_steps: int, *args: Any, **kwargs: Any) -> None: ...


@dataclass(frozen=True)
class SchedulerRecipe:
    """A diffusers class plus the config overrides that make it the sampler users expect."""

    cls: type[SchedulerMixin]
    overrides: Mapping[str, Any] = field(default_factory=dict)


_NO_KARRAS: Mapping[str, Any] = {"use_karras_sigmas": False}

#: canonical name -> recipe. Every key of SCHEDULER_DISPLAY_NAMES must be here (a unit test checks).
SCHEDULERS: dict[str, SchedulerRecipe] = {
    "ddim": SchedulerRecipe(DDIMScheduler),
    "ddpm": SchedulerRecipe(DDPMScheduler),
    # A1111's "PLMS": without skip_prk_steps diffusers runs Runge-Kutta warm-up steps first,
    # which is a different sampler and makes the step count differ from what was asked.
    "pndm": SchedulerRecipe(PNDMScheduler, {"skip_prk_steps": True}),
    # Karras sigmas are a separate sampler name; a model config that enables them must not
    # silently turn "euler" into "Euler Karras".
    "lms": SchedulerRecipe(LMSDiscreteScheduler, _NO_KARRAS),  # needs scipy at set_timesteps time
    "euler": SchedulerRecipe(EulerDiscreteScheduler, _NO_KARRAS),
    "euler_a": SchedulerRecipe(EulerAncestralDiscreteScheduler),
    "heun": SchedulerRecipe(HeunDiscreteScheduler, _NO_KARRAS),
    "dpmpp_2m": SchedulerRecipe(DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", **_NO_KARRAS}),
    "dpmpp_2m_karras": SchedulerRecipe(
        DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}
    ),
    "unipc": SchedulerRecipe(UniPCMultistepScheduler),
}


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> Scheduler:
    """A new scheduler ``name`` (canonical) with the model's noise schedule from ``base_config``.

    ``base_config`` is the resident scheduler's ``.config``. Keys the target class does not
    know (e.g. DDIM's ``clip_sample``) are ignored by diffusers. Raises
    :class:`UnknownChoice` for a name that is not canonical.
    """
    recipe = SCHEDULERS.get(name)
    if recipe is None:
        valid = ", ".join(SCHEDULER_DISPLAY_NAMES)
        raise UnknownChoice(f"unknown scheduler {name!r}; valid schedulers: {valid}", param="scheduler")
    config = dict(base_config)
    config.update(recipe.overrides)
    # from_config comes from ConfigMixin, which every scheduler class also inherits.
    scheduler: Scheduler = cast(Any, recipe.cls).from_config(config)
    return scheduler
