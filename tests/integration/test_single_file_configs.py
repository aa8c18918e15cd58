"""The diffusers configs shipped for single-file checkpoints (worker/pipelines/single_file_configs)
describe each family's real architecture: every component builds from them (on the meta device,
no weights) with the shapes that family's files have, and the tokenizers use the real CLIP BPE."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")

from accelerate import init_empty_weights
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from worker.pipelines.checkpoints import CONFIGS_DIR, _tokenizer

#: family folder -> (UNet input channels, cross-attention width, text widths, VAE scaling factor)
EXPECTED = {
    "sd1": (4, 768, {"text_encoder": 768}, 0.18215),
    "sd1-inpaint": (9, 768, {"text_encoder": 768}, 0.18215),
    "sd2": (4, 1024, {"text_encoder": 1024}, 0.18215),
    "sd2-inpaint": (9, 1024, {"text_encoder": 1024}, 0.18215),
    "sdxl": (4, 2048, {"text_encoder": 768, "text_encoder_2": 1280}, 0.13025),
    "sdxl-inpaint": (9, 2048, {"text_encoder": 768, "text_encoder_2": 1280}, 0.13025),
    "sdxl-refiner": (4, 1280, {"text_encoder_2": 1280}, 0.13025),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_each_shipped_config_builds_its_familys_architecture(family: str) -> None:
    channels, cross, texts, scaling = EXPECTED[family]
    folder = CONFIGS_DIR / family
    index = json.loads((folder / "model_index.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        for name, width in texts.items():
            config = CLIPTextConfig.from_pretrained(folder / name)
            cls = CLIPTextModelWithProjection if index[name][1] == "CLIPTextModelWithProjection" else CLIPTextModel
            assert cls(config).config.hidden_size == width
            tokenizer = _tokenizer(folder / name.replace("text_encoder", "tokenizer"))
            assert tokenizer is not None and tokenizer("a photo of a cat").input_ids[:3] == [49406, 320, 1125]
    assert unet.config.in_channels == channels and unet.config.cross_attention_dim == cross
    assert vae.config.scaling_factor == scaling and vae.config.latent_channels == 4
    tokenizers = [name.replace("text_encoder", "tokenizer") for name in texts]
    loaded = [name for name, value in index.items() if isinstance(value, list) and value[0]]
    assert sorted(loaded) == sorted(["scheduler", "unet", "vae", *texts, *tokenizers])  # nothing else to fetch
