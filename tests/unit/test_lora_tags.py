"""A1111 ``<lora:name:scale>`` tags in prompts (core/lora_tags.py via core.validation): a tag
selects the LoRA like the ``loras`` field, with the same limits, and leaves the text; the
queue payload keeps the prompt as written for the infotext."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.errors import InvalidRequest, UnknownChoice
from core.jobs import wire_payload
from core.lora_tags import extract_lora_tags
from core.schemas import ImageRequest, JobPayload, LoraWeight
from core.validation import normalize_request
from worker.runtime.encoding import parameters_text


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    folder = tmp_path / "loras"
    folder.mkdir()
    for name in ("ink", "film-grain", "detail_v1.5"):
        (folder / f"{name}.safetensors").write_bytes(b"")
    return Settings(data_dir=tmp_path, max_loras=2)


def normalize(settings: Settings, prompt: str, **extra: Any) -> JobPayload:
    request = ImageRequest.model_validate({"prompt": prompt, **extra})
    return normalize_request(request, settings, tenant="t1", job_id="j1", now=1000.0)


def refused(settings: Settings, prompt: str, **extra: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        normalize(settings, prompt, **extra)
    return info.value


def test_a_tag_selects_the_lora_and_leaves_the_text_like_a1111(settings: Settings) -> None:
    job = normalize(settings, "a lighthouse <lora:ink:0.8>, at dusk <lyco:film-grain>")
    assert job.loras == (LoraWeight(name="film-grain", scale=1.0), LoraWeight(name="ink", scale=0.8))
    assert job.prompt == "a lighthouse , at dusk "  # A1111 cuts the tag out and nothing else
    assert job.prompt_as_written == "a lighthouse <lora:ink:0.8>, at dusk <lyco:film-grain>"


def test_a_tag_and_the_field_make_the_same_job(settings: Settings) -> None:
    tagged = normalize(settings, "a lighthouse<lora:detail_v1.5:0.7000001>")
    field = normalize(settings, "a lighthouse", loras=[{"name": "detail_v1.5", "scale": 0.7}])
    assert (tagged.prompt, tagged.loras) == (field.prompt, field.loras)
    assert field.prompt_as_written is None
    assert "prompt_as_written" not in wire_payload(field)  # older workers still take plain jobs
    assert wire_payload(tagged)["prompt_as_written"] == "a lighthouse<lora:detail_v1.5:0.7000001>"


def test_tags_and_field_combine_under_the_same_count_limit(settings: Settings) -> None:
    job = normalize(settings, "x <lora:ink:0.5>", loras=[{"name": "film-grain", "scale": 1}])
    assert [lora.name for lora in job.loras] == ["film-grain", "ink"]
    error = refused(settings, "x <lora:ink> <lora:film-grain> <lora:detail_v1.5>")
    assert (error.param, "maximum is 2" in error.message) == ("prompt", True)


@pytest.mark.parametrize(
    ("prompt", "extra", "param", "words"),
    [
        ("x <lora:nope:1>", {}, "prompt", "unknown LoRA 'nope'"),
        ("x <lora:ink:9>", {}, "prompt", "allowed range"),
        ("x <lora:ink:strong>", {}, "prompt", "not a number"),
        ("x <lora:ink:nan>", {}, "prompt", "finite"),
        ("x <lora:ink:0.5:0.7>", {}, "prompt", "one scale"),
        ("x <lora:ink> <lora:ink:0.3>", {}, "prompt", "two <lora:> tags"),
        ("x <lora:ink>", {"loras": [{"name": "ink"}]}, "prompt", "both in loras"),
        ("x <hypernet:ink:1>", {}, "prompt", "'hypernet'"),
        ("x <lora:my lora:1>", {}, "prompt", "does not name a LoRA"),
        ("x", {"negative_prompt": "blur <lora:ink:-1>"}, "negative_prompt", "put its tag in prompt"),
    ],
)
def test_a_bad_tag_is_refused_naming_the_prompt(
    settings: Settings, prompt: str, extra: dict[str, Any], param: str, words: str
) -> None:
    error = refused(settings, prompt, **extra)
    assert error.param == param
    assert words in error.message
    if "unknown" in words:
        assert isinstance(error, UnknownChoice) and "ink" in error.message  # lists the valid names


def test_a_scale_zero_tag_runs_the_base_model(settings: Settings) -> None:
    job = normalize(settings, "x <lora:ink:0>")
    assert job.loras == () and job.prompt == "x "


def test_text_without_tags_is_untouched() -> None:
    text = "a <cat> and (dog:1.2) at 10:30 <b>"
    assert extract_lora_tags(text).text == text and extract_lora_tags(text).loras == ()


def test_the_infotext_shows_the_prompt_as_written_plus_field_loras(settings: Settings) -> None:
    job = normalize(settings, "a lighthouse <lora:ink:0.8>, at dusk", loras=[{"name": "film-grain", "scale": 0.5}])
    first_line = parameters_text(job, seed=1, model_name="tiny").splitlines()[0]
    assert first_line == "a lighthouse <lora:ink:0.8>, at dusk <lora:film-grain:0.5>"
