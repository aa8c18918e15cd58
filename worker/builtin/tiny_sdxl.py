"""The built-in offline SDXL model and its refiner: real SDXL pipelines with tiny random weights.

Why it exists: the SDXL code paths (two text encoders, pooled embeddings, size/crop
conditioning through the UNet's ``text_time`` embedding, the refiner's aesthetic-score
conditioning and the ensemble-of-experts handoff) must run in tests and CI on CPU without
downloading ~7 GB. Like :mod:`worker.builtin.tiny`, the weights are random, so images are noise, but
every diffusers class and call around them is the real one.

What a caller may rely on:

* :func:`ensure_tiny_sdxl` returns a folder ``StableDiffusionXLPipeline.from_pretrained`` loads
  (safetensors only); :func:`ensure_tiny_sdxl_refiner` returns a refiner folder holding ONLY
  what the refiner does not share with the base (its UNet, its scheduler and its
  ``model_index.json``): the worker takes ``text_encoder_2``, ``tokenizer_2`` and the VAE from
  the resident base, as with the real SDXL 1.0 refiner, whose text encoder and VAE are the
  base's.
* Builds are bit-identical (fixed seeds, generated tokenizer) and cached under
  ``cache_dir/models``; bump the ``*_NAME`` constants when a recipe changes.
* Sizes are those of diffusers' own SDXL tests, scaled to the tiny SD model's speed: 64 px by
  default, up to 256 px; clip_skip up to 4 (5 text-encoder layers).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from worker.builtin.tiny import (
    BOS_TOKEN,
    EOS_TOKEN,
    MAX_TOKENS,
    TEXT_LAYERS,
    _tokenizer,
    _vae,
    sd_scheduler,
    tiny_vocab,
)

log = logging.getLogger(__name__)

TINY_SDXL_NAME = "tiny-sdxl-v1"
TINY_SDXL_REFINER_NAME = "tiny-sdxl-refiner-v1"
_MODEL_INDEX = "model_index.json"

#: Width of each text encoder; the UNet's cross-attention sees both, concatenated.
TEXT_WIDTH = 32
#: Width of text_encoder_2's pooled projection (SDXL's ``text_embeds``).
POOLED_WIDTH = 32
#: Each size/crop/aesthetic number is embedded in this many channels (SDXL: 256).
TIME_EMBED_WIDTH = 8
#: SDXL's VAE latent scale; the refiner shares the VAE, so it shares this too.
SDXL_SCALING_FACTOR = 0.13025


def _text_config(vocab: dict[str, int]) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=POOLED_WIDTH,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )


def _unet(cross_attention_dim: int, time_ids: int) -> UNet2DConditionModel:
    """An SDXL-style UNet: ``text_time`` added conditioning of ``time_ids`` numbers plus the pooled
    text embedding (6 for the base: original size, crop, target size; 5 for the refiner:
    original size, crop, aesthetic score). Cross-attention only at the lowest resolution, for
    CPU speed (see worker/builtin/tiny.py)."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_WIDTH,
        projection_class_embeddings_input_dim=time_ids * TIME_EMBED_WIDTH + POOLED_WIDTH,
        norm_num_groups=32,
    )


def _sdxl_vae() -> AutoencoderKL:
    vae = _vae()
    # No fp16 upcast: the tiny model runs in float32 (a real SDXL VAE in fp16 needs it).
    vae.register_to_config(scaling_factor=SDXL_SCALING_FACTOR, force_upcast=False)
    return vae


def build_tiny_sdxl() -> StableDiffusionXLPipeline:
    """A fresh tiny SDXL base pipeline in memory; deterministic (each part has its own seed)."""
    vocab, _ = tiny_vocab()
    torch.manual_seed(10)
    unet = _unet(cross_attention_dim=2 * TEXT_WIDTH, time_ids=6)
    torch.manual_seed(11)
    vae = _sdxl_vae()
    torch.manual_seed(12)
    text_encoder = CLIPTextModel(_text_config(vocab))
    torch.manual_seed(13)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(vocab))
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": _tokenizer(),
        "tokenizer_2": _tokenizer(),
        "unet": unet,
        "scheduler": sd_scheduler(),
        "image_encoder": None,
        "feature_extractor": None,
    }
    return StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=True, add_watermarker=False)


def build_tiny_sdxl_refiner_unet() -> UNet2DConditionModel:
    """The refiner's own UNet: text_encoder_2's width only, aesthetic-score conditioning."""
    torch.manual_seed(14)
    return _unet(cross_attention_dim=TEXT_WIDTH, time_ids=5)


def _refiner_index() -> dict[str, Any]:
    """The refiner's model_index.json, shaped like stabilityai/stable-diffusion-xl-refiner-1.0's
    (whose text_encoder_2 and vae are the base's), minus the shared modules' entries."""
    return {
        "_class_name": "StableDiffusionXLImg2ImgPipeline",
        "_diffusers_version": "0.42.1",
        "force_zeros_for_empty_prompt": False,
        "requires_aesthetics_score": True,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }


def _build_once(target: Path, write: Callable[[Path], None]) -> Path:
    """Build into a temporary sibling folder and rename it into place (see worker/builtin/tiny.py)."""
    if (target / _MODEL_INDEX).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        with torch.random.fork_rng(devices=[]):
            write(tmp)
        try:
            os.rename(tmp, target)
            log.info("built %s", target)
        except OSError:
            if not (target / _MODEL_INDEX).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_tiny_sdxl(cache_dir: Path) -> Path:
    """The tiny SDXL base model's folder under ``cache_dir/models``, built on first use."""
    return _build_once(
        Path(cache_dir) / "models" / TINY_SDXL_NAME,
        lambda folder: build_tiny_sdxl().save_pretrained(folder, safe_serialization=True),
    )


def _write_refiner(folder: Path) -> None:
    build_tiny_sdxl_refiner_unet().save_pretrained(folder / "unet", safe_serialization=True)
    sd_scheduler().save_pretrained(folder / "scheduler")
    (folder / _MODEL_INDEX).write_text(json.dumps(_refiner_index(), indent=2) + "\n")


def ensure_tiny_sdxl_refiner(cache_dir: Path) -> Path:
    """The tiny refiner's folder (UNet + scheduler + model_index.json), built on first use."""
    return _build_once(Path(cache_dir) / "models" / TINY_SDXL_REFINER_NAME, _write_refiner)
