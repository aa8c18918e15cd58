"""worker.pipelines.schedulers: every canonical name maps to a fresh diffusers scheduler."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler

from core.errors import UnknownChoice
from core.scheduler_names import SCHEDULER_DISPLAY_NAMES
from worker.builtin.tiny import sd_scheduler
from worker.pipelines.schedulers import SCHEDULERS, make_scheduler

# LMS and UniPC call np.array() on a tensor; numpy 2 warns about the copy keyword. Harmless.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def base_config() -> dict[str, object]:
    return dict(sd_scheduler().config)


def test_every_canonical_name_has_a_recipe() -> None:
    assert set(SCHEDULERS) == set(SCHEDULER_DISPLAY_NAMES)


@pytest.mark.parametrize("name", sorted(SCHEDULER_DISPLAY_NAMES))
def test_make_scheduler_builds_the_mapped_class(name: str, base_config: dict[str, object]) -> None:
    scheduler = make_scheduler(name, base_config)
    assert type(scheduler) is SCHEDULERS[name].cls
    # The model's training noise schedule is carried over from the resident config.
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_start == pytest.approx(0.00085)
    scheduler.set_timesteps(4)  # LMS needs scipy here; Heun/PNDM double up some timesteps
    assert len(scheduler.timesteps) >= 4


@pytest.mark.parametrize("name", sorted(SCHEDULER_DISPLAY_NAMES))
def test_each_call_gives_a_fresh_scheduler(name: str, base_config: dict[str, object]) -> None:
    first, second = make_scheduler(name, base_config), make_scheduler(name, base_config)
    assert first is not second
    first.set_timesteps(3)
    second.set_timesteps(7)
    assert len(first.timesteps) != len(second.timesteps)


def test_karras_flag(base_config: dict[str, object]) -> None:
    karras = make_scheduler("dpmpp_2m_karras", base_config)
    plain = make_scheduler("dpmpp_2m", {**base_config, "use_karras_sigmas": True})
    assert isinstance(karras, DPMSolverMultistepScheduler)
    assert karras.config.use_karras_sigmas is True
    assert karras.config.algorithm_type == "dpmsolver++"
    # A model config that enables Karras sigmas must not turn plain DPM++ 2M into the Karras one.
    assert plain.config.use_karras_sigmas is False


def test_plms_skips_runge_kutta_warmup(base_config: dict[str, object]) -> None:
    assert make_scheduler("pndm", base_config).config.skip_prk_steps is True


def test_base_config_is_not_mutated(base_config: dict[str, object]) -> None:
    before = dict(base_config)
    make_scheduler("dpmpp_2m_karras", base_config)
    assert base_config == before


def test_unknown_name_lists_valid_ones(base_config: dict[str, object]) -> None:
    with pytest.raises(UnknownChoice) as info:
        make_scheduler("Euler a", base_config)  # display names are the API's job to fold
    assert "euler_a" in info.value.message
    assert info.value.param == "scheduler"
