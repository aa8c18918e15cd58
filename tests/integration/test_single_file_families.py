"""Single-file checkpoints of the SD 2.x, SDXL base and SDXL refiner layouts on the real loader.

Each case writes a tiny diffusers pipeline of the family as one original-layout file (text
encoders in OpenCLIP layout where the family has them: tests/support/single_file_openclip.py),
loads it through the real loader (Engine -> load_checkpoint -> diffusers' from_single_file,
offline, the registry ``config`` naming the tiny architecture's diffusers folder) and draws
bit-identical fp32 images to the folder it came from:

* SD 2.x epsilon; SD 2.x v-prediction from a ``v_pred`` marker key and from the registry's
  ``prediction_type`` (the file carries the unused last text-encoder layer real SD 2.x files
  have; a loader that ran it would draw another image);
* SDXL base (CLIP-L + OpenCLIP bigG), alone and with the tiny refiner;
* SDXL refiner file (the registry's ``refiner``, with ``refiner_config`` naming the tiny
  refiner's folder): its UNet loads with the same weights and refines exactly as the folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

from core.checkpoints import detect, read_header
from core.errors import ModelUnavailable
from tests.support.embedding import registry_toml
from tests.support.engine import engine_settings, noise_image, payload
from tests.support.single_file_openclip import (
    refiner_to_ldm,
    save_ldm,
    sd2_style_pipeline,
    sd2_to_ldm,
    sdxl_distinct_widths,
    sdxl_to_ldm,
)
from worker.builtin import tiny
from worker.builtin.tiny_sdxl import ensure_tiny_sdxl_refiner
from worker.pipelines.engine import Engine

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

V_PRED = {"v_pred": torch.zeros(0)}  # the (empty) marker ComfyUI and trainers write


@dataclasses.dataclass(frozen=True)
class Sd2:
    folder: Path  # epsilon scheduler: the architecture's `config` for every file below
    v_folder: Path  # the same weights, scheduler predicting v
    file: Path
    v_file: Path  # with the v_pred marker key


@dataclasses.dataclass(frozen=True)
class Xl:
    folder: Path
    file: Path
    refiner_folder: Path
    refiner_file: Path


@pytest.fixture(scope="module")
def sd2(tmp_path_factory: pytest.TempPathFactory) -> Sd2:
    root = tmp_path_factory.mktemp("single-file-sd2")
    pipe = sd2_style_pipeline(tiny.ensure_tiny_model(root / "data"))
    pipe.save_pretrained(root / "tiny-sd2", safe_serialization=True)
    state = sd2_to_ldm(pipe)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type="v_prediction")
    pipe.save_pretrained(root / "tiny-sd2-v", safe_serialization=True)
    return Sd2(
        folder=root / "tiny-sd2",
        v_folder=root / "tiny-sd2-v",
        file=save_ldm(state, root / "checkpoints" / "tiny-sd2.safetensors"),
        v_file=save_ldm(state, root / "checkpoints" / "tiny-sd2-v.safetensors", extra=V_PRED),
    )


@pytest.fixture(scope="module")
def xl(tmp_path_factory: pytest.TempPathFactory) -> Xl:
    root = tmp_path_factory.mktemp("single-file-sdxl")
    pipe = sdxl_distinct_widths()
    pipe.save_pretrained(root / "tiny-sdxl", safe_serialization=True)
    refiner_folder = ensure_tiny_sdxl_refiner(root / "data")
    refiner_unet = UNet2DConditionModel.from_pretrained(refiner_folder, subfolder="unet")
    refiner = refiner_to_ldm(refiner_unet, pipe.vae, pipe.text_encoder_2, dict(pipe.scheduler.config))
    return Xl(
        folder=root / "tiny-sdxl",
        file=save_ldm(sdxl_to_ldm(pipe), root / "checkpoints" / "tiny-sdxl.safetensors"),
        refiner_folder=refiner_folder,
        refiner_file=save_ldm(refiner, root / "checkpoints" / "tiny-sdxl-refiner.safetensors"),
    )


def _engine(tmp_path: Path, entry: dict[str, Any]) -> Engine:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models.toml").write_text(registry_toml([{"id": "m", **entry}]))
    return Engine.load(engine_settings(tmp_path / "data", models_file=tmp_path / "models.toml"))


def _draw(engine: Engine, **fields: Any) -> np.ndarray:
    (images,) = engine.generate_arrays([payload(**{"model": "m", "prompt": "a red cat", "seed": 3, **fields})])
    return images


def _sd2_images(engine: Engine) -> list[np.ndarray]:
    return [_draw(engine), _draw(engine, mode="img2img", image_b64=noise_image(1), seed=4)]


def _prediction(engine: Engine) -> str:
    return str(engine.pipeline("txt2img", "ddim").scheduler.config.prediction_type)


def test_the_files_are_detected_as_their_families(sd2: Sd2, xl: Xl) -> None:
    found = {path.name: detect(read_header(path)) for path in (sd2.file, sd2.v_file, xl.file, xl.refiner_file)}
    assert [(i.family, i.inpaint) for i in found.values()] == [
        ("sd2", False), ("sd2", False), ("sdxl", False), ("sdxl-refiner", False)
    ]  # fmt: skip
    # No marker: SD 2.x counts as 768-v (with a registry `config`, its scheduler decides instead).
    assert found["tiny-sd2.safetensors"].prediction == "v_prediction"
    assert "v_pred key" in found["tiny-sd2-v.safetensors"].evidence
    assert found["tiny-sdxl.safetensors"].prediction == "epsilon"
    # As real SD 2.x files: one text-encoder layer more than the diffusers encoder runs.
    header = read_header(sd2.file)
    assert f"cond_stage_model.model.transformer.resblocks.{tiny.TEXT_LAYERS}.attn.in_proj_weight" in header
    assert f"cond_stage_model.model.transformer.resblocks.{tiny.TEXT_LAYERS + 1}.ln_1.weight" not in header


def test_an_sd2_epsilon_file_draws_like_its_folder(tmp_path: Path, sd2: Sd2) -> None:
    from_folder = _engine(tmp_path / "a", {"source": str(sd2.folder), "family": "sd2"})
    from_file = _engine(tmp_path / "b", {"source": str(sd2.file), "family": "sd2", "config": str(sd2.folder)})
    assert _prediction(from_file) == "epsilon"
    for a, b in zip(_sd2_images(from_folder), _sd2_images(from_file), strict=True):
        np.testing.assert_array_equal(a, b)  # fp32: bit-identical (same weights, configs, code)


def test_an_sd2_v_prediction_file_draws_like_its_folder(tmp_path: Path, sd2: Sd2) -> None:
    """v from the file's marker, and from the registry for a file without one; both with the
    epsilon folder as `config`, so only the loader's prediction handling makes them v."""
    from_folder = _engine(tmp_path / "a", {"source": str(sd2.v_folder), "family": "sd2"})
    config = str(sd2.folder)
    marked = _engine(tmp_path / "b", {"source": str(sd2.v_file), "family": "sd2", "config": config})
    declared = _engine(tmp_path / "c", {"source": str(sd2.file), "family": "sd2", "config": config,
                                        "prediction_type": "v_prediction"})  # fmt: skip
    assert _prediction(from_folder) == _prediction(marked) == _prediction(declared) == "v_prediction"
    expected = _sd2_images(from_folder)
    for engine in (marked, declared):
        for a, b in zip(expected, _sd2_images(engine), strict=True):
            np.testing.assert_array_equal(a, b)
    epsilon = _engine(tmp_path / "d", {"source": str(sd2.file), "family": "sd2", "config": config})
    assert float(np.abs(_draw(epsilon) - expected[0]).max()) > 1e-3  # the prediction type matters


def test_an_sdxl_file_draws_like_its_folder_alone_and_refined(tmp_path: Path, xl: Xl) -> None:
    refiner = str(xl.refiner_folder)
    from_folder = _engine(tmp_path / "a", {"source": str(xl.folder), "family": "sdxl", "refiner": refiner})
    from_file = _engine(tmp_path / "b", {"source": str(xl.file), "family": "sdxl", "config": str(xl.folder),
                                         "refiner": refiner})  # fmt: skip
    for engine in (from_folder, from_file):
        assert engine._components["text_encoder"].config.hidden_size == 16
        assert engine._components["text_encoder_2"].config.hidden_size == 32
    xl_fields: dict[str, Any] = {"guidance_scale": 5.0, "negative_prompt": "blurry"}
    for fields in ({}, {"refiner": {"switch_at": 0.5}}, {"mode": "img2img", "image_b64": noise_image(1)}):
        np.testing.assert_array_equal(
            _draw(from_folder, **xl_fields, **fields), _draw(from_file, **xl_fields, **fields)
        )


def test_an_sdxl_refiner_file_refines_like_its_folder(tmp_path: Path, xl: Xl) -> None:
    """A registry ``refiner`` file, read with ``refiner_config`` naming its (tiny) architecture,
    loads the folder's UNet weights and refines through the engine exactly as the folder does."""
    base = {"source": str(xl.file), "family": "sdxl", "config": str(xl.folder)}
    from_folder = _engine(tmp_path / "a", {**base, "refiner": str(xl.refiner_folder)})
    from_file = _engine(tmp_path / "b", {**base, "refiner": str(xl.refiner_file),
                                         "refiner_config": str(xl.refiner_folder)})  # fmt: skip
    fields: dict[str, Any] = {"guidance_scale": 5.0, "refiner": {"switch_at": 0.5}}
    np.testing.assert_array_equal(_draw(from_folder, **fields), _draw(from_file, **fields))
    assert from_file.refiners is not None and from_folder.refiners is not None
    (loaded,) = from_file.refiners._loaded.values()
    (expected,) = from_folder.refiners._loaded.values()
    assert loaded.source == str(xl.refiner_file)
    reference = expected.unet.state_dict()
    assert loaded.unet.state_dict().keys() == reference.keys()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.unet.state_dict().items())


def test_a_refiner_file_is_refused_as_a_models_source(tmp_path: Path, xl: Xl) -> None:
    with pytest.raises(ModelUnavailable) as info:
        _engine(tmp_path, {"source": str(xl.refiner_file), "family": "sdxl", "config": str(xl.folder)})
    assert "SDXL refiner" in info.value.message and "'refiner'" in info.value.message
