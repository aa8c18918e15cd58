"""SDXL at the API edge: the model's family and refiner from Settings, the ``refiner`` request
field (422 naming the field for a model without one), and the refiner in the batch key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from core.batch_key import BatchKey
from core.config import Settings
from core.errors import InvalidRequest
from core.models import is_sdxl_folder, resolve_model
from core.schemas import ImageRequest, JobPayload
from core.validation import normalize_request


def _xl(tmp_path: Path, refiner: str | None = "tiny-sdxl-refiner", **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path, model="tiny-sdxl", refiner=refiner, **overrides)


def _normalize(settings: Settings, **body: Any) -> JobPayload:
    request = ImageRequest(**{"prompt": "a lighthouse", "seed": 1, **body})
    return normalize_request(request, settings, tenant="t1", job_id="j1", now=1000.0)


def _refused(settings: Settings, **body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        _normalize(settings, **body)
    return info.value


def test_the_tiny_sdxl_model_is_an_sdxl_model_with_its_refiner(tmp_path: Path) -> None:
    spec = resolve_model(_xl(tmp_path), None)
    assert (spec.id, spec.family, spec.refiner) == ("tiny-sdxl", "sdxl", "tiny-sdxl-refiner")
    assert (spec.default_width, spec.default_height, spec.default_guidance) == (64, 64, 5.0)
    assert spec.public()["refiner"] is True and "source" not in spec.public()
    assert resolve_model(_xl(tmp_path, refiner=None), None).public()["refiner"] is False


def test_an_sdxl_folder_is_recognised_by_its_model_index(tmp_path: Path) -> None:
    folder = tmp_path / "my-xl"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert is_sdxl_folder(str(folder))
    spec = resolve_model(Settings(data_dir=tmp_path, model=str(folder)), None)
    assert (spec.id, spec.family, spec.default_width, spec.refiner) == ("my-xl", "sdxl", 1024, None)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert not is_sdxl_folder(str(folder)) and not is_sdxl_folder(str(tmp_path / "missing"))
    assert resolve_model(Settings(data_dir=tmp_path, model=str(folder)), None).family == "sd1"


def test_a_refiner_request_is_normalised_and_joins_the_batch_key(tmp_path: Path) -> None:
    settings = _xl(tmp_path)
    plain = _normalize(settings)
    refined = _normalize(settings, refiner={"switch_at": 0.80000001})
    assert plain.refiner is None and refined.refiner is not None and refined.refiner.switch_at == 0.8
    assert _normalize(settings, refiner={}).refiner == refined.refiner  # switch_at defaults to 0.8
    keys = {BatchKey.of(p) for p in (plain, refined, _normalize(settings, refiner={"switch_at": 0.7}))}
    assert len(keys) == 3  # refined never batches with plain, nor with another handoff point
    assert BatchKey.of(refined) == BatchKey.of(_normalize(settings, refiner={"switch_at": 0.8}, prompt="x", seed=5))
    # Through the queue as JSON and back.
    assert JobPayload.model_validate_json(refined.model_dump_json()) == refined


@pytest.mark.parametrize("model_settings", ["sd", "xl-without-refiner"])
def test_a_refiner_on_a_model_without_one_is_refused_naming_the_field(tmp_path: Path, model_settings: str) -> None:
    settings = Settings(data_dir=tmp_path) if model_settings == "sd" else _xl(tmp_path, refiner=None)
    error = _refused(settings, refiner={"switch_at": 0.8})
    assert error.param == "refiner" and "has no refiner" in error.message


def test_a_refiner_is_only_for_text_to_image_with_steps_on_both_sides(tmp_path: Path) -> None:
    from tests.support.engine import noise_image

    settings = _xl(tmp_path)
    assert _refused(settings, refiner={"switch_at": 0.8}, image=noise_image(1)).param == "refiner"
    error = _refused(settings, refiner={"switch_at": 0.9}, steps=5)  # 5 x 0.1 rounds to no refiner step
    assert error.param == "refiner.switch_at" and "steps" in error.message
    assert _refused(settings, refiner={"switch_at": 0.1}, steps=5).param == "refiner.switch_at"


@pytest.mark.parametrize("switch_at", [0, 1, 1.5, -0.2, "soon", float("nan")])
def test_switch_at_must_be_inside_the_schedule(switch_at: Any) -> None:
    with pytest.raises(ValidationError) as info:
        ImageRequest(prompt="x", refiner={"switch_at": switch_at})
    assert info.value.errors()[0]["loc"][:2] == ("refiner", "switch_at")
    with pytest.raises(ValidationError):
        ImageRequest(prompt="x", refiner={"switch_at": 0.8, "steps": 3})  # unknown fields are refused
