"""The Stable Diffusion 1.5 architecture with random weights, for benchmarks on this CPU.

No real weights can be downloaded here, but speed and memory depend only on the architecture:
UNet 859.5 M, text encoder 123.1 M, VAE 83.7 M parameters, exactly SD 1.5's shapes. Saved in
bfloat16 (2 GB) so loading never casts through a 5.6 GiB float32 peak. The tokenizer is the
tiny model's (token ids fit the full-size vocabulary).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from worker.builtin.tiny import BOS_TOKEN, EOS_TOKEN, MAX_TOKENS, sd_scheduler, tiny_vocab

NAME = "sd15-random-bf16"


def build_sd15_random() -> StableDiffusionPipeline:
    vocab, merges = tiny_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=cast(Any, merges), model_max_length=MAX_TOKENS)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the defaults are SD 1.5's
    torch.manual_seed(1)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=768,
            bos_token_id=vocab[BOS_TOKEN],
            eos_token_id=vocab[EOS_TOKEN],
            pad_token_id=vocab[EOS_TOKEN],
        )
    )
    parts: dict[str, Any] = {
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "scheduler": sd_scheduler(),
    }  # diffusers types scheduler as an enum of names; any of its schedulers works
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, **parts)
    return pipe.to(dtype=torch.bfloat16)


def ensure_sd15_random(cache_dir: Path) -> Path:
    """Build once into ``cache_dir/models/sd15-random-bf16`` (about 30 s here) and reuse."""
    target = Path(cache_dir) / "models" / NAME
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.", dir=target.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            build_sd15_random().save_pretrained(tmp, safe_serialization=True)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
