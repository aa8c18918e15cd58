"""core.controlnets and the ControlNet part of the batch key: how a request's ``controlnet``
list is refused (naming the field and the valid choices or limit) or normalised before
anything is enqueued, and which of its parts split batches."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from core.batch_key import BatchKey
from core.config import Settings
from core.controlnets import normalize_controlnets
from core.errors import InvalidRequest, UnknownChoice
from core.models import ControlNetSpec, ModelSpec, resolve_model
from core.schemas import ControlNetJob, ImageRequest
from tests.support.bombs import b64 as raw_b64
from tests.support.bombs import png_bomb, png_header_only
from tests.support.controlnet import b64, edge_map
from tests.support.engine import payload

EDGES = b64(edge_map(1))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, max_controlnets=2, max_upload_pixels=512 * 512)


@pytest.fixture
def spec(settings: Settings) -> ModelSpec:
    controlnets = (ControlNetSpec("canny", "/cn/canny", "canny"), ControlNetSpec("depth", "/cn/depth"))
    return dataclasses.replace(resolve_model(settings, None), controlnets=controlnets)


def normalize(spec: ModelSpec, settings: Settings, *units: dict[str, Any]) -> tuple[ControlNetJob, ...]:
    request = ImageRequest.model_validate({"prompt": "a house", "controlnet": [{"image": EDGES, **u} for u in units]})
    return normalize_controlnets(request.controlnet, spec, settings)


def refused(spec: ModelSpec, settings: Settings, *units: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        normalize(spec, settings, *units)
    return info.value


def test_units_are_normalised_in_order_with_the_default_preprocessing(spec: ModelSpec, settings: Settings) -> None:
    units = normalize(spec, settings, {"name": "depth", "scale": 0.70004, "start": 0.1, "end": 0.9}, {"name": "canny"})
    assert [(u.name, u.scale, u.start, u.end, u.preprocess) for u in units] == [
        ("depth", 0.7, 0.1, 0.9, "none"),
        ("canny", 1.0, 0.0, 1.0, "canny"),  # the registry's default for "canny"
    ]
    assert units[0].image_b64 == EDGES
    (explicit,) = normalize(spec, settings, {"name": "canny", "preprocess": "none"})
    assert explicit.preprocess == "none"
    # The same ControlNet twice (two edge maps) is allowed.
    assert len(normalize(spec, settings, {"name": "canny"}, {"name": "canny"})) == 2


def test_scale_zero_units_are_dropped_so_the_request_batches_with_plain_ones(
    spec: ModelSpec, settings: Settings
) -> None:
    assert normalize(spec, settings, {"name": "canny", "scale": 0}) == ()
    assert [u.name for u in normalize(spec, settings, {"name": "canny", "scale": 0.0}, {"name": "depth"})] == ["depth"]
    # ...but a dropped unit is still checked: a bad image is refused.
    assert refused(spec, settings, {"name": "canny", "scale": 0, "image": "%%"}).param == "controlnet[0].image"


def test_an_unknown_name_is_refused_listing_the_valid_ones(spec: ModelSpec, settings: Settings) -> None:
    error = refused(spec, settings, {"name": "canny"}, {"name": "pose"})
    assert isinstance(error, UnknownChoice) and error.param == "controlnet[1].name"
    assert "'pose'" in error.message and "canny, depth" in error.message
    bare = dataclasses.replace(spec, controlnets=())
    assert "none (model 'tiny' has no ControlNets)" in refused(bare, settings, {"name": "canny"}).message


@pytest.mark.parametrize(
    ("unit", "param", "words"),
    [
        ({"scale": 2.5}, "controlnet[0].scale", "0.0..2.0"),
        ({"scale": -0.1}, "controlnet[0].scale", "0.0..2.0"),
        ({"start": 0.5, "end": 0.5}, "controlnet[0].start", "must be below"),
        ({"start": 0.8, "end": 0.2}, "controlnet[0].start", "must be below"),
        ({"start": -0.1}, "controlnet[0].start", "0..1"),
        ({"end": 1.5}, "controlnet[0].end", "0..1"),
        ({"image": "not base64!"}, "controlnet[0].image", "not valid base64"),
        ({"image": raw_b64(b"GIF89a" + b"\x00" * 40)}, "controlnet[0].image", "allowed formats: PNG, JPEG, WebP"),
        ({"image": raw_b64(png_header_only(20000, 20000))}, "controlnet[0].image", "the limit is 262144"),
        ({"image": raw_b64(png_bomb(4000, 4000))}, "controlnet[0].image", "the limit is 262144"),
    ],
)
def test_bad_units_are_refused_naming_the_field_and_the_limit(
    spec: ModelSpec, settings: Settings, unit: dict[str, Any], param: str, words: str
) -> None:
    error = refused(spec, settings, {"name": "canny", **unit})
    assert error.param == param and words in error.message


def test_bounds_on_the_number_of_units_and_the_model_family(spec: ModelSpec, settings: Settings) -> None:
    too_many = refused(spec, settings, {"name": "canny"}, {"name": "depth"}, {"name": "canny"})
    assert too_many.param == "controlnet" and "maximum is 2" in too_many.message
    off = refused(spec, Settings(data_dir=settings.data_dir, max_controlnets=0), {"name": "canny"})
    assert off.param == "controlnet" and "SFUMATO_MAX_CONTROLNETS=0" in off.message
    sdxl = refused(dataclasses.replace(spec, family="sdxl"), settings, {"name": "canny"})
    assert sdxl.param == "controlnet" and "sdxl" in sdxl.message
    with pytest.raises(ValueError, match="preprocess"):  # a preprocessor the worker does not have
        normalize(spec, settings, {"name": "canny", "preprocess": "openpose"})


def test_a_request_without_controlnet_is_unchanged(spec: ModelSpec, settings: Settings) -> None:
    assert normalize(spec, settings) == ()


def unit(image: str = EDGES, **changes: Any) -> ControlNetJob:
    values: dict[str, Any] = {"name": "canny", "image_b64": image, "scale": 1.0, "start": 0.0, "end": 1.0}
    return ControlNetJob(**{"preprocess": "none", **values, **changes})


def test_control_images_vary_inside_a_batch_but_every_setting_splits_it() -> None:
    key = BatchKey.of(payload(controlnet=(unit(),)))
    assert key.controlnets == (("canny", 1.0, 0.0, 1.0, "none"),)
    assert BatchKey.of(payload(controlnet=(unit(b64(edge_map(2))),), prompt="x", seed=3)) == key
    variants = [
        payload(),
        payload(controlnet=(unit(),)),
        payload(controlnet=(unit(name="depth"),)),
        payload(controlnet=(unit(scale=0.5),)),
        payload(controlnet=(unit(start=0.2),)),
        payload(controlnet=(unit(end=0.8),)),
        payload(controlnet=(unit(preprocess="canny"),)),
        payload(controlnet=(unit(), unit(name="depth"))),
        payload(controlnet=(unit(name="depth"), unit())),  # order pairs names with images
    ]
    keys = {BatchKey.of(p) for p in variants}
    assert len(keys) == len(variants) and len({k.digest() for k in keys}) == len(variants)


def test_a_payload_without_controlnet_keeps_its_key() -> None:
    # Jobs queued before ControlNet existed (no "controlnet" in their JSON) still batch with new ones.
    data = payload().model_dump(mode="json")
    data.pop("controlnet")
    assert BatchKey.of(type(payload()).model_validate(data)) == BatchKey.of(payload())
