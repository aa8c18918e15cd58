"""core.registry + core.models: the model registry file is parsed, validated with errors that
name the model and the field, and turned into specs; without it nothing changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.errors import InvalidRequest, ModelUnavailable, RegistryInvalid, UnknownChoice
from core.loras import available_loras, lora_path
from core.models import resolve_model, served_models, worker_model
from core.schemas import ImageRequest, JobPayload
from core.validation import normalize_request

REGISTRY = """
[[models]]
id = "dream"
source = "./models/dream"
family = "sd1"
default_steps = 25
default_scheduler = "Euler a"
lora_dir = "loras/dream"
  [[models.embeddings]]
  token = "<ink>"
  path = "embeddings/ink.safetensors"
  [[models.controlnets]]
  name = "canny"
  source = "lllyasviel/sd-controlnet-canny"
  preprocess = "canny"

[[models]]
id = "xl"
source = "stabilityai/stable-diffusion-xl-base-1.0"
family = "sdxl"
sizes = [[1024, 1024], [896, 1152]]
refiner = "stabilityai/stable-diffusion-xl-refiner-1.0"

[[models]]
id = "tiny"
source = "tiny"
family = "tiny"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_file=write(tmp_path, REGISTRY), max_size=1152)


def normalize(settings: Settings, **fields: Any) -> JobPayload:
    fields.setdefault("prompt", "a lighthouse")
    return normalize_request(ImageRequest(**fields), settings, tenant="t", job_id="j", now=0.0)


def test_the_registry_lists_every_model_in_order_with_family_defaults(settings: Settings, tmp_path: Path) -> None:
    models = served_models(settings)
    assert list(models) == ["dream", "xl", "tiny"]
    dream, xl, tiny = models.values()
    assert dream.source == str(tmp_path / "models" / "dream")  # relative to the file's folder
    assert (dream.default_width, dream.default_steps, dream.default_scheduler) == (512, 25, "euler_a")
    assert dream.embeddings[0].token == "<ink>"
    assert dream.embeddings[0].path == str(tmp_path / "embeddings" / "ink.safetensors")
    assert dream.controlnets[0].source == "lllyasviel/sd-controlnet-canny"  # a hub id stays one
    assert dream.lora_dir == str(tmp_path / "loras" / "dream")
    assert (xl.default_width, xl.default_height, xl.max_size) == (1024, 1024, 1152)
    assert xl.sizes == ((1024, 1024), (896, 1152)) and xl.refiner is not None
    assert (tiny.family, tiny.default_width, tiny.max_size) == ("tiny", 64, 256)
    assert dream.max_size == 1024  # the family's limit (below SFUMATO_MAX_SIZE here)


def test_public_specs_show_names_and_never_local_paths(settings: Settings, tmp_path: Path) -> None:
    for spec in served_models(settings).values():
        text = repr(spec.public())
        assert str(tmp_path) not in text and "source" not in spec.public()
    dream = served_models(settings)["dream"].public()
    assert dream["embeddings"] == ["<ink>"] and dream["controlnets"] == [{"name": "canny", "preprocess": "canny"}]
    assert served_models(settings)["xl"].public()["refiner"] is True
    assert served_models(settings)["xl"].public()["sizes"] == [[1024, 1024], [896, 1152]]


def test_without_a_registry_there_is_exactly_the_one_configured_model(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert list(served_models(settings)) == ["tiny"]
    assert worker_model(settings).id == "tiny"
    assert settings.resolved_queue_without_workers is True


def test_an_unknown_model_lists_the_valid_ids(settings: Settings) -> None:
    with pytest.raises(UnknownChoice) as info:
        normalize(settings, model="sd-turbo")
    assert info.value.param == "model"
    assert all(name in info.value.message for name in ("dream", "xl", "tiny"))
    assert normalize(settings, model="tiny").width == 64
    assert normalize(settings).model == "dream"  # the first model is the default


def test_a_size_the_model_does_not_allow_is_refused_naming_the_allowed_sizes(settings: Settings) -> None:
    assert (normalize(settings, model="xl").width, normalize(settings, model="xl").height) == (1024, 1024)
    assert normalize(settings, model="xl", width=896, height=1152).height == 1152
    with pytest.raises(InvalidRequest) as info:
        normalize(settings, model="xl", width=1024, height=896)
    assert info.value.param == "width"
    assert "1024x1024, 896x1152" in info.value.message and "1024x896" in info.value.message


def test_loras_come_from_the_models_own_folder(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "loras" / "dream").mkdir(parents=True)
    (tmp_path / "loras" / "dream" / "ink.safetensors").write_bytes(b"")
    settings.resolved_lora_dir.mkdir(parents=True)
    (settings.resolved_lora_dir / "global.safetensors").write_bytes(b"")
    dream, tiny = resolve_model(settings, "dream"), resolve_model(settings, "tiny")
    assert available_loras(settings, dream) == ["ink"]
    assert available_loras(settings, tiny) == ["global"]  # no lora_dir: the global folder
    assert lora_path(settings, "ink", dream) == tmp_path / "loras" / "dream" / "ink.safetensors"
    assert normalize(settings, loras=[{"name": "ink", "scale": 0.5}]).loras[0].name == "ink"
    with pytest.raises(UnknownChoice) as info:
        normalize(settings, model="tiny", loras=[{"name": "ink", "scale": 0.5}])
    assert "global" in info.value.message


def test_the_worker_serves_the_model_it_is_told_to(settings: Settings) -> None:
    assert worker_model(settings).id == "dream"
    assert worker_model(settings.model_copy(update={"worker_model": "xl"})).id == "xl"
    with pytest.raises(ModelUnavailable) as info:
        worker_model(settings.model_copy(update={"worker_model": "nope"}))
    assert "nope" in info.value.message and "dream, xl, tiny" in info.value.message


def test_with_a_registry_requests_for_unserved_models_are_refused_by_default(settings: Settings) -> None:
    assert settings.resolved_queue_without_workers is False
    assert settings.model_copy(update={"queue_without_workers": True}).resolved_queue_without_workers is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[models]]\nid = "a"\nsource = "tiny"\nfamily = "sd3"', ["model 'a' (models[0])", "family"]),
        ('[[models]]\nid = "a"\nfamily = "sd1"', ["model 'a' (models[0])", "source", "Field required"]),
        (
            '[[models]]\nid = "a"\nsource = "x/y"\nfamily = "sd1"\ndefault_scheduler = "warp"',
            ["model 'a'", "default_scheduler", "valid schedulers"],
        ),
        (
            '[[models]]\nid = "a"\nsource = "x/y"\nfamily = "sd1"\n[[models.embeddings]]\ntoken = "<t>"\npath = "t.pt"',
            ["model 'a'", "embeddings[0].path", "pickle"],
        ),
        (
            '[[models]]\nid = "a"\nsource = "x/y"\nfamily = "sd1"\n'
            '[[models]]\nid = "a"\nsource = "x/z"\nfamily = "sd1"',
            ["id 'a' is given twice"],
        ),
        ('[[models]]\nid = "a b"\nsource = "x/y"\nfamily = "sd1"', ["models[0]", "id"]),
        ('[[models]]\nid = "a"\nsource = "x/y"\nfamily = "sd1"\ncolour = "red"', ["model 'a'", "colour"]),
        ('[[models]]\nid = "a"\nsource = "x/y"\nfamily = "sd1"\nrefiner = "r/s"', ["model 'a'", "only SDXL"]),
        ('[[models]]\nid = "a"\nsource = "tiny"\nfamily = "sd1"', ["model 'a'", "built-in tiny"]),
        (
            '[[models]]\nid = "a"\nsource = "x/y"\nfamily = "sd1"\ndefault_width = 500',
            ["default_width", "multiple of 8"],
        ),
        ("models = []", ["models", "at least 1"]),
        ("[[models]\nid=", ["not valid TOML"]),
    ],
)
def test_a_broken_registry_names_the_model_and_the_field(tmp_path: Path, text: str, expected: list[str]) -> None:
    settings = Settings(data_dir=tmp_path, models_file=write(tmp_path, text))
    with pytest.raises(RegistryInvalid) as info:
        served_models(settings)
    assert info.value.code == "model_registry_invalid"
    for part in expected:
        assert part in info.value.message, info.value.message


def test_defaults_outside_the_models_own_limits_are_refused(tmp_path: Path) -> None:
    text = '[[models]]\nid = "a"\nsource = "x/y"\nfamily = "sd1"\nmax_size = 512\ndefault_width = 768'
    with pytest.raises(ModelUnavailable, match=r"model 'a'.*768x512.*max_size 512"):
        served_models(Settings(data_dir=tmp_path, models_file=write(tmp_path, text)))
    text = '[[models]]\nid = "a"\nsource = "x/y"\nfamily = "sd1"\nsizes = [[512, 768]]\ndefault_width = 768'
    with pytest.raises(ModelUnavailable, match="not one of its sizes"):
        served_models(Settings(data_dir=tmp_path, models_file=write(tmp_path, text)))
    text = '[[models]]\nid = "a"\nsource = "x/y"\nfamily = "sdxl"\nsizes = [[1024, 1024], [896, 1152]]'
    with pytest.raises(ModelUnavailable, match=r"sizes 896x1152 exceed its max_size 1024.*SFUMATO_MAX_SIZE=1024"):
        served_models(Settings(data_dir=tmp_path, models_file=write(tmp_path, text)))


def test_the_built_in_tiny_sdxl_gets_tiny_sizes(tmp_path: Path) -> None:
    text = '[[models]]\nid = "xl"\nsource = "tiny-sdxl"\nfamily = "sdxl"'
    (spec,) = served_models(Settings(data_dir=tmp_path, models_file=write(tmp_path, text))).values()
    assert (spec.source, spec.family, spec.default_width, spec.max_size, spec.default_guidance) == (
        "tiny-sdxl", "sdxl", 64, 256, 5.0
    )  # fmt: skip
    with pytest.raises(RegistryInvalid, match="built-in tiny SDXL"):
        served_models(Settings(data_dir=tmp_path, models_file=write(tmp_path, text.replace('"sdxl"', '"sd1"'))))


def test_the_built_in_shapes_model_gets_its_32_px_defaults(tmp_path: Path) -> None:
    (spec,) = served_models(Settings(data_dir=tmp_path, model="shapes")).values()
    expected = ("shapes", "shapes", "sd1", 32, 32, 64, 20, "ddim", 3.0)
    assert (spec.id, spec.source, spec.family, spec.default_width, spec.default_height, spec.max_size,
            spec.default_steps, spec.default_scheduler, spec.default_guidance) == expected  # fmt: skip
    (capped,) = served_models(Settings(data_dir=tmp_path, model="shapes", max_size=48)).values()
    assert capped.max_size == 48 and capped.min_size == 32
    text = '[[models]]\nid = "drawn"\nsource = "shapes"\nfamily = "sd1"'
    (entry,) = served_models(Settings(data_dir=tmp_path, models_file=write(tmp_path, text))).values()
    assert (entry.source, entry.default_width, entry.max_size, entry.default_guidance) == ("shapes", 32, 64, 3.0)
    with pytest.raises(RegistryInvalid, match="built-in shapes model"):
        served_models(Settings(data_dir=tmp_path, models_file=write(tmp_path, text.replace('"sd1"', '"tiny"'))))


def test_the_shapes_model_takes_its_32_px_while_other_models_keep_the_global_minimum(tmp_path: Path) -> None:
    shapes = Settings(data_dir=tmp_path, model="shapes")
    job = normalize_request(ImageRequest(prompt="a red circle"), shapes, tenant="t", job_id="j", now=0.0)
    assert (job.width, job.height, job.steps, job.guidance_scale) == (32, 32, 20, 3.0)
    with pytest.raises(InvalidRequest, match="width is 24; the minimum is 32"):
        normalize_request(ImageRequest(prompt="x", width=24), shapes, tenant="t", job_id="j", now=0.0)
    tiny = Settings(data_dir=tmp_path, model="tiny")
    with pytest.raises(InvalidRequest, match="width is 32; the minimum is 64"):
        normalize_request(ImageRequest(prompt="x", width=32), tiny, tenant="t", job_id="j", now=0.0)


def test_a_missing_registry_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RegistryInvalid, match="cannot be read"):
        served_models(Settings(data_dir=tmp_path, models_file=tmp_path / "absent.toml"))


def test_an_edited_registry_is_read_again(settings: Settings) -> None:
    assert "extra" not in served_models(settings)
    assert settings.models_file is not None
    settings.models_file.write_text(REGISTRY + '\n[[models]]\nid = "extra"\nsource = "tiny"\nfamily = "tiny"\n')
    assert "extra" in served_models(settings)
