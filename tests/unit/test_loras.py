"""core.loras and the LoRA part of core.validation: what is offered (safetensors only, safe
names), and how a request's LoRAs are refused or normalised before anything is enqueued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.errors import InvalidRequest, UnknownChoice
from core.loras import available_loras, lora_path
from core.schemas import ImageRequest, JobPayload
from core.validation import normalize_request


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    folder = tmp_path / "loras"
    folder.mkdir()
    for name in ("ink", "film-grain", "detail_v1.5"):
        (folder / f"{name}.safetensors").write_bytes(b"")
    return Settings(data_dir=tmp_path, max_loras=2)


def normalize(settings: Settings, *loras: dict[str, Any]) -> JobPayload:
    request = ImageRequest.model_validate({"prompt": "a lighthouse", "loras": list(loras)})
    return normalize_request(request, settings, tenant="t1", job_id="j1", now=1000.0)


def refused(settings: Settings, *loras: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        normalize(settings, *loras)
    return info.value


def test_only_safetensors_files_with_safe_names_are_offered(settings: Settings) -> None:
    folder = settings.resolved_lora_dir
    for unsafe in ("pickled.bin", "pickled.ckpt", "weights.pt", ".hidden.safetensors", "sp ace.safetensors"):
        (folder / unsafe).write_bytes(b"")
    (folder / "a-folder.safetensors").mkdir()
    assert available_loras(settings) == ["detail_v1.5", "film-grain", "ink"]


def test_the_folder_defaults_to_data_dir_and_may_be_missing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "nowhere")
    assert settings.resolved_lora_dir == tmp_path / "nowhere" / "loras"
    assert available_loras(settings) == []
    assert available_loras(Settings(data_dir=tmp_path, lora_dir=tmp_path / "elsewhere")) == []


def test_lora_path_never_leaves_the_folder(settings: Settings) -> None:
    assert lora_path(settings, "ink") == settings.resolved_lora_dir / "ink.safetensors"
    for bad in ("../ink", "a/b", ".ink", "", "x" * 101):
        with pytest.raises(ValueError):
            lora_path(settings, bad)


def test_an_unknown_lora_is_refused_naming_the_field_and_the_valid_names(settings: Settings) -> None:
    error = refused(settings, {"name": "ink"}, {"name": "../ink"})
    assert isinstance(error, UnknownChoice) and error.param == "loras[1].name"
    assert "detail_v1.5, film-grain, ink" in error.message
    empty = Settings(data_dir=settings.data_dir / "empty")
    assert "none" in refused(empty, {"name": "ink"}).message
    for i in range(60):
        (settings.resolved_lora_dir / f"z{i:02d}.safetensors").write_bytes(b"")
    message = refused(settings, {"name": "nope"}).message
    assert "z46" in message and "z47" not in message and "and 13 more (see GET /v1/models)" in message


def test_limits_on_count_scale_and_duplicates(settings: Settings) -> None:
    too_many = refused(settings, {"name": "ink"}, {"name": "film-grain"}, {"name": "detail_v1.5"})
    assert too_many.param == "loras" and "maximum is 2" in too_many.message
    high = refused(settings, {"name": "ink", "scale": 2.5})
    assert high.param == "loras[0].scale" and "-2.0..2.0" in high.message
    assert refused(settings, {"name": "ink", "scale": -2.01}).param == "loras[0].scale"
    assert refused(settings, {"name": "ink"}, {"name": "ink", "scale": 0.5}).param == "loras[1].name"
    assert refused(Settings(data_dir=settings.data_dir, max_loras=0), {"name": "ink"}).param == "loras"


def test_non_finite_scales_and_unknown_keys_are_refused_by_the_schema() -> None:
    for bad in (
        {"name": "ink", "scale": float("nan")},
        {"name": "ink", "scale": float("inf")},
        {"name": "ink", "w": 1},
    ):
        with pytest.raises(ValueError):
            ImageRequest.model_validate({"prompt": "x", "loras": [bad]})


def test_the_set_is_sorted_rounded_and_scale_zero_is_dropped(settings: Settings) -> None:
    job = normalize(settings, {"name": "ink", "scale": 0.70000001}, {"name": "film-grain", "scale": -1})
    assert [(lora.name, lora.scale) for lora in job.loras] == [("film-grain", -1.0), ("ink", 0.7)]
    same = normalize(settings, {"name": "film-grain", "scale": -1.0}, {"name": "ink", "scale": 0.7})
    assert same.loras == job.loras
    assert normalize(settings, {"name": "ink", "scale": 0.0}).loras == ()
    assert normalize(settings, {"name": "ink", "scale": 0.0001}).loras == ()  # rounds to 0
    assert normalize(settings).loras == ()
    assert [lora.scale for lora in normalize(settings, {"name": "ink"}).loras] == [1.0]  # default scale
