"""Canonical scheduler name -> a fresh diffusers scheduler.

Schedulers hold per-run state (timesteps, step index, multistep history), so one object must
never serve two calls: :func:`make_scheduler` builds a new one each time from the resident
scheduler's config, which carries the model's training noise schedule (betas, prediction
type). Names are validated by the API (``core.scheduler_names``); this module only maps them.

A model's registry ``timestep_spacing`` is applied once to that base config
(:func:`model_scheduler_config`), so every scheduler built for the model -- per request, for
ControlNet and for the SDXL refiner -- spaces its timesteps the same way.
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
from diffusers.schedulers.scheduling_lcm import LCMScheduler
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.schedulers.scheduling_tcd import TCDScheduler, TCDSchedulerOutput
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

#: TCD's gamma (its ``eta``): the stochasticity of each step, 0 deterministic, 1 like LCM's
#: multistep sampling. 0.3 is what TCD's authors and diffusers' TCD guide use for 4-8 steps.
TCD_GAMMA = 0.3


class GammaTCDScheduler(TCDScheduler):
    """diffusers' TCD with gamma fixed at :data:`TCD_GAMMA`.

    Why a subclass: every Stable Diffusion pipeline passes its own ``eta`` argument (DDIM's,
    0.0 unless the caller sets it) to any scheduler whose ``step`` takes one, and TCD reads it
    as gamma. Sfumato's API has no ``eta``, so without this every TCD image would be sampled
    at gamma 0 instead of TCD's intended default. Everything else is TCDScheduler's own.
    """

    gamma: float = TCD_GAMMA

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = TCD_GAMMA,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> TCDSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        del eta  # the pipeline's DDIM eta, not a choice anyone made for TCD
        return super().step(
            model_output, timestep, sample, eta=self.gamma, generator=generator, return_dict=return_dict
        )


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
    # LCM and TCD ignore timestep_spacing: they always start at the last training timestep and
    # pick their steps from a 50-step distillation schedule (hence core.scheduler_names'
    # SCHEDULER_MAX_STEPS). Each non-final step adds fresh noise from the per-image generators.
    "lcm": SchedulerRecipe(LCMScheduler),
    "tcd": SchedulerRecipe(GammaTCDScheduler),
}


def model_scheduler_config(resident: Mapping[str, Any], timestep_spacing: str | None) -> dict[str, Any]:
    """The base config every scheduler of a model is built from: the resident scheduler's
    ``.config`` with the model's registry ``timestep_spacing`` (None: the config's own).

    The engine calls this once at load; :func:`make_scheduler` then carries the spacing into
    every scheduler class that knows it (all but LCM and TCD, whose schedules are fixed).
    """
    if timestep_spacing is None:
        return dict(resident)
    return _with_overrides(resident, {"timestep_spacing": timestep_spacing})


def _with_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` updated with ``overrides`` that ``from_config`` will really apply.

    diffusers lists in ``_use_default_values`` the keys a scheduler took from its class defaults
    and drops them in ``from_config`` so the target class uses its own default: an override of
    such a key (a model config without ``timestep_spacing``, say) would silently vanish.
    """
    merged = {**config, **overrides}
    defaults = merged.get("_use_default_values")
    if defaults:
        merged["_use_default_values"] = [key for key in defaults if key not in overrides]
    return merged


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
    config = _with_overrides(base_config, recipe.overrides)
    # from_config comes from ConfigMixin, which every scheduler class also inherits.
    scheduler: Scheduler = cast(Any, recipe.cls).from_config(config)
    return scheduler
