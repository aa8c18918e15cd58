"""Few-step sampling on the API side (torch-free): the lcm/tcd names, their step limit, the
registry's ``timestep_spacing`` and few-step defaults, and what the batch key knows about
guidance at or below 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.batch_key import BatchKey
from core.config import Settings
from core.errors import InvalidRequest, RegistryInvalid
from core.models import served_models
from core.scheduler_names import SCHEDULER_DISPLAY_NAMES, SCHEDULER_MAX_STEPS, canonical_scheduler
from core.schemas import ImageRequest, JobPayload
from core.validation import normalize_request

REGISTRY = """
[[models]]
id = "lcm-dream"
source = "tiny"
family = "tiny"
default_scheduler = "LCM"
default_steps = 4
default_guidance = 1.0

[[models]]
id = "turbo"
source = "tiny"
family = "tiny"
default_scheduler = "euler_a"
default_steps = 1
default_guidance = 0.0
timestep_spacing = "trailing"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_file=write(tmp_path, REGISTRY))


def normalize(settings: Settings, **fields: Any) -> JobPayload:
    fields.setdefault("prompt", "a lighthouse")
    return normalize_request(ImageRequest(**fields), settings, tenant="t1", job_id="j1", now=1000.0)


@pytest.mark.parametrize(("spelling", "canonical"), [("LCM", "lcm"), ("lcm", "lcm"), ("TCD", "tcd"), (" tcd ", "tcd")])
def test_lcm_and_tcd_are_schedulers_with_their_a1111_names(spelling: str, canonical: str) -> None:
    assert canonical_scheduler(spelling) == canonical
    assert SCHEDULER_DISPLAY_NAMES["lcm"] == "LCM" and SCHEDULER_DISPLAY_NAMES["tcd"] == "TCD"


def test_few_step_defaults_from_the_registry_fill_a_request(settings: Settings) -> None:
    payload = normalize(settings, model="lcm-dream")
    assert (payload.scheduler, payload.steps, payload.guidance_scale) == ("lcm", 4, 1.0)
    turbo = normalize(settings, model="turbo")
    assert (turbo.scheduler, turbo.steps, turbo.guidance_scale) == ("euler_a", 1, 0.0)


def test_timestep_spacing_reaches_the_spec_and_the_models_listing(settings: Settings) -> None:
    models = served_models(settings)
    assert models["turbo"].timestep_spacing == "trailing"
    assert models["lcm-dream"].timestep_spacing is None  # the model's own scheduler config
    assert models["turbo"].public()["timestep_spacing"] == "trailing"


def test_an_unknown_timestep_spacing_names_the_model_and_the_field(tmp_path: Path) -> None:
    text = '[[models]]\nid = "m"\nsource = "tiny"\nfamily = "tiny"\ntimestep_spacing = "backwards"\n'
    settings = Settings(data_dir=tmp_path, models_file=write(tmp_path, text))
    with pytest.raises(RegistryInvalid) as info:
        served_models(settings)
    for part in ("model 'm'", "timestep_spacing", "'leading', 'linspace' or 'trailing'"):
        assert part in info.value.message


def test_registry_refuses_more_default_steps_than_lcm_can_run(tmp_path: Path) -> None:
    text = '[[models]]\nid = "m"\nsource = "tiny"\nfamily = "tiny"\ndefault_scheduler = "lcm"\ndefault_steps = 60\n'
    settings = Settings(data_dir=tmp_path, models_file=write(tmp_path, text))
    with pytest.raises(RegistryInvalid) as info:
        served_models(settings)
    assert "model 'm'" in info.value.message and "default_steps: 60" in info.value.message
    assert "at most 50" in info.value.message


@pytest.mark.parametrize("scheduler", sorted(SCHEDULER_MAX_STEPS))
def test_a_request_past_the_distillation_schedule_is_refused_naming_steps(settings: Settings, scheduler: str) -> None:
    limit = SCHEDULER_MAX_STEPS[scheduler]
    assert normalize(settings, model="turbo", scheduler=scheduler, steps=limit).steps == limit
    with pytest.raises(InvalidRequest) as info:
        normalize(settings, model="turbo", scheduler=scheduler.upper(), steps=limit + 1)
    assert info.value.param == "steps"
    assert f"steps is {limit + 1}" in info.value.message and f"is {limit}" in info.value.message


def test_other_schedulers_keep_only_the_operator_step_limit(settings: Settings) -> None:
    assert normalize(settings, model="turbo", scheduler="ddim", steps=80).steps == 80


def test_guidance_at_or_below_one_means_one_unet_row_per_image(settings: Settings) -> None:
    keys = {g: BatchKey.of(normalize(settings, model="lcm-dream", guidance_scale=g)) for g in (0.0, 0.5, 1.0, 1.5, 7.0)}
    assert [keys[g].classifier_free_guidance for g in (0.0, 0.5, 1.0)] == [False, False, False]
    assert [keys[g].unet_rows_per_image for g in (0.0, 0.5, 1.0, 1.5, 7.0)] == [1, 1, 1, 2, 2]
    # 0.5 and 1.0 both skip the unconditional pass, yet never share a call: a guidance-distilled
    # UNet embeds the scale itself, and a pipeline call takes one scale.
    assert keys[0.5] != keys[1.0] and keys[0.5].digest() != keys[1.0].digest()
