"""worker.pipelines.schedulers for few-step sampling: LCM and TCD, TCD's gamma, and a model's
``timestep_spacing`` carried into every scheduler built for it."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

import torch
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_lcm import LCMScheduler
from diffusers.schedulers.scheduling_tcd import TCDScheduler

from core.scheduler_names import SCHEDULER_MAX_STEPS, TIMESTEP_SPACINGS
from worker.builtin.tiny import sd_scheduler
from worker.pipelines.schedulers import TCD_GAMMA, GammaTCDScheduler, make_scheduler, model_scheduler_config

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

#: Schedulers whose timesteps follow ``timestep_spacing`` (Karras sigmas replace the spacing;
#: LCM and TCD sample their own fixed distillation schedule).
SPACED = ["ddim", "ddpm", "pndm", "lms", "euler", "euler_a", "heun", "dpmpp_2m", "unipc"]


@pytest.fixture(scope="module")
def base_config() -> dict[str, object]:
    return dict(sd_scheduler().config)


def timesteps(name: str, config: dict[str, object], steps: int = 4) -> list[int]:
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(steps)
    return [round(float(t)) for t in scheduler.timesteps]


def test_lcm_and_tcd_build_the_diffusers_classes(base_config: dict[str, object]) -> None:
    assert isinstance(make_scheduler("lcm", base_config), LCMScheduler)
    tcd = make_scheduler("tcd", base_config)
    assert isinstance(tcd, TCDScheduler) and isinstance(tcd, GammaTCDScheduler)
    # The model's training noise schedule is kept.
    assert tcd.config.beta_schedule == "scaled_linear" and tcd.config.beta_end == pytest.approx(0.012)


@pytest.mark.parametrize("name", sorted(SCHEDULER_MAX_STEPS))
def test_few_step_schedules_start_from_pure_noise(name: str, base_config: dict[str, object]) -> None:
    assert timesteps(name, base_config, 1) == [999]
    assert timesteps(name, base_config, 4) == [999, 759, 499, 259]
    # Their schedules are fixed: a model's spacing does not move them.
    assert timesteps(name, model_scheduler_config(base_config, "leading"), 4) == [999, 759, 499, 259]


@pytest.mark.parametrize("name", sorted(SCHEDULER_MAX_STEPS))
def test_the_api_step_limit_is_what_diffusers_can_run(name: str, base_config: dict[str, object]) -> None:
    limit = SCHEDULER_MAX_STEPS[name]
    assert len(timesteps(name, base_config, limit)) == limit
    with pytest.raises(ValueError, match="num_inference_steps"):
        timesteps(name, base_config, limit + 1)


def test_ddim_trailing_spacing_starts_at_the_last_training_timestep(base_config: dict[str, object]) -> None:
    assert timesteps("ddim", base_config) == [751, 501, 251, 1]  # the tiny model's own: leading, offset 1
    assert timesteps("ddim", model_scheduler_config(base_config, "trailing")) == [999, 749, 499, 249]
    assert timesteps("ddim", model_scheduler_config(base_config, "linspace")) == [999, 666, 333, 0]


@pytest.mark.parametrize("name", SPACED)
def test_every_spaced_scheduler_follows_the_model_spacing(name: str, base_config: dict[str, object]) -> None:
    by_spacing = {s: timesteps(name, model_scheduler_config(base_config, s)) for s in TIMESTEP_SPACINGS}
    assert by_spacing["trailing"][0] == 999
    assert by_spacing["leading"][0] < 999  # leading leaves the noisiest timesteps out
    assert make_scheduler(name, model_scheduler_config(base_config, "trailing")).config.timestep_spacing == "trailing"


def test_no_spacing_keeps_the_model_config(base_config: dict[str, object]) -> None:
    assert model_scheduler_config(base_config, None) == base_config
    assert model_scheduler_config(base_config, None) is not base_config


def test_an_override_of_a_defaulted_key_is_not_dropped() -> None:
    """diffusers drops keys listed in ``_use_default_values`` in from_config; a model whose
    config left ``use_karras_sigmas`` or ``timestep_spacing`` out must still get the override."""
    resident = dict(DPMSolverMultistepScheduler().config)
    assert {"use_karras_sigmas", "timestep_spacing"} <= set(resident["_use_default_values"])
    assert make_scheduler("dpmpp_2m_karras", resident).config.use_karras_sigmas is True
    spaced = make_scheduler("dpmpp_2m", model_scheduler_config(resident, "trailing"))
    assert spaced.config.timestep_spacing == "trailing"


def test_tcd_uses_its_gamma_whatever_eta_the_pipeline_passes(base_config: dict[str, object]) -> None:
    """SD pipelines pass eta=0.0 (DDIM's) to any scheduler that takes it; TCD must keep gamma 0.3."""
    assert TCD_GAMMA == 0.3

    def step(scheduler: TCDScheduler, **kwargs: float) -> torch.Tensor:
        scheduler.set_timesteps(4)
        sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        output = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        noise = torch.Generator().manual_seed(3)
        result = scheduler.step(output, scheduler.timesteps[0], sample, generator=noise, return_dict=False, **kwargs)
        return result[0]

    ours = step(make_scheduler("tcd", base_config), eta=0.0)  # type: ignore[arg-type]
    reference = TCDScheduler.from_config(base_config)
    assert torch.equal(ours, step(reference, eta=TCD_GAMMA))
    assert not torch.equal(ours, step(TCDScheduler.from_config(base_config), eta=0.0))
