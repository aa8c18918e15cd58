"""LoRA files in the kohya / A1111 layout on the real tiny pipeline: a kohya file (with alphas,
on attention and text encoder, or on convolutions: LyCORIS LoCon) gives the same image as the
diffusers file it was converted from; LoHa/LoKr files are refused by name and format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import GenerationFailed
from core.schemas import LoraWeight
from tests.support.engine import payload
from tests.support.kohya import lycoris_file, to_kohya
from tests.support.lora import make_lora
from worker.pipelines.engine import Engine

pytestmark = pytest.mark.filterwarnings(
    "ignore:No LoRA keys associated to CLIPTextModel",
    "ignore:Already found a `peft_config` attribute",
)

CONV_TARGETS = ["conv1", "conv2", "conv_shortcut", "proj_in", "proj_out"]


@pytest.fixture(scope="module")
def folder(data_dir: Path) -> Path:
    """data_dir/loras (the session engine's folder): each LoRA in both layouts."""
    folder = data_dir / "loras"
    attn = make_lora(folder, "kx-attn", seed=11, text_encoder=True)
    to_kohya(attn, folder / "kx-attn-kohya.safetensors", alpha=2.0)  # alpha != rank: scale 0.5
    conv = make_lora(folder, "kx-locon", seed=12, unet_targets=CONV_TARGETS)
    to_kohya(conv, folder / "kx-locon-kohya.safetensors", alpha=1.0)
    lycoris_file(folder / "kx-loha.safetensors", "loha")
    lycoris_file(folder / "kx-lokr.safetensors", "lokr")
    return folder


def image(engine: Engine, lora: str | None) -> np.ndarray:
    loras = () if lora is None else (LoraWeight(name=lora, scale=0.8),)
    return engine.generate_arrays([payload(loras=loras, steps=4)])[0]


@pytest.mark.parametrize("name", ["kx-attn", "kx-locon"])
def test_a_kohya_lora_gives_the_image_of_its_diffusers_source(engine: Engine, folder: Path, name: str) -> None:
    base = image(engine, None)
    diffusers = image(engine, name)
    kohya = image(engine, f"{name}-kohya")
    assert float(np.abs(diffusers - base).max()) > 1e-2  # it does something (convolutions for LoCon)
    assert float(np.abs(kohya - diffusers).max()) <= 1e-5
    assert engine.loras.loaded[-1].text_encoder is (name == "kx-attn")  # lora_te_* keys applied


@pytest.mark.parametrize(("name", "what"), [("kx-loha", "LyCORIS LoHa"), ("kx-lokr", "LyCORIS LoKr")])
def test_loha_and_lokr_are_refused_by_name_and_format(engine: Engine, folder: Path, name: str, what: str) -> None:
    with pytest.raises(GenerationFailed) as info:
        image(engine, name)
    assert f"{name!r}" in info.value.message and what in info.value.message
    assert np.array_equal(image(engine, None), image(engine, None))  # the worker still serves
