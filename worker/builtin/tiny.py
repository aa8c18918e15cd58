"""The built-in offline model: a real Stable Diffusion pipeline with tiny random weights.

Why it exists: tests, CI and ``make run`` need the real diffusers code paths (text encoder,
UNet, VAE, tokenizer, schedulers, img2img, inpainting) without downloading gigabytes. The
weights are random, so images are noise, but everything around them is real.

What a caller may rely on:

* :func:`ensure_tiny_model` returns a folder ``StableDiffusionPipeline.from_pretrained`` loads
  (safetensors only), built at most once per ``cache_dir``.
* Every build is bit-identical: the weights come from fixed seeds and the tokenizer files
  are generated, not downloaded. Bump :data:`TINY_MODEL_NAME` when the recipe changes so an
  old cache is never mistaken for the new model.
* It works at 64 px (default), 128 px and 256 px; the text encoder has enough layers for
  ``clip_skip`` up to 4.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import torch

# Concrete module paths, not ``from diffusers import X``: diffusers' lazy __init__ makes mypy
# see the dummy placeholder classes instead of the real ones.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

log = logging.getLogger(__name__)

#: Folder name under ``cache_dir/models``; a new recipe gets a new name.
TINY_MODEL_NAME = "tiny-v1"
#: Its presence marks a finished model (builds appear only by renaming a complete folder).
_MODEL_INDEX = "model_index.json"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_TOKENS = 77
#: clip_skip may be up to 4 (Settings.max_clip_skip): 5 layers leave one real layer's output.
TEXT_LAYERS = 5
TEXT_WIDTH = 32

#: A few merges so the tokenizer has real multi-byte tokens; the exact list is arbitrary but fixed.
_MERGE_WORDS = ("a", "the", "cat", "dog", "red", "blue", "photo", "of", "in", "on", "sky", "tree")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map, which CLIP's BPE is defined over."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _merges_for(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that build ``word</w>`` from its characters."""
    symbols = [*word[:-1], word[-1] + "</w>"]
    merges = []
    while len(symbols) > 1:
        merges.append((symbols[0], symbols[1]))
        symbols = [symbols[0] + symbols[1], *symbols[2:]]
    return merges


def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level CLIP vocabulary: 256 symbols, the same with ``</w>``, merges, specials."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in _MERGE_WORDS:
        for pair in _merges_for(word):
            if pair not in merges:
                merges.append(pair)
                merged = pair[0] + pair[1]
                if merged not in tokens:
                    tokens.append(merged)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _tokenizer() -> CLIPTokenizer:
    vocab, merges = tiny_vocab()
    # transformers annotates merges as list[str], but the tokenizers backend only accepts
    # (left, right) tuples here.
    return CLIPTokenizer(vocab=vocab, merges=cast(Any, merges), model_max_length=MAX_TOKENS)


def _text_encoder(vocab: dict[str, int]) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    return CLIPTextModel(config)


def _unet() -> UNet2DConditionModel:
    # Cross-attention only at the lowest resolution: ~2.5x faster per step on CPU than
    # attention at every level, and still exercises the text conditioning path.
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _vae() -> AutoencoderKL:
    # Four blocks = three 2x downsamples: the SD latent geometry (4 channels, /8).
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=64,
    )


def sd_scheduler() -> DDIMScheduler:
    """The SD 1.x training schedule; other samplers are derived from this config per call."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def build_tiny_pipeline() -> StableDiffusionPipeline:
    """A fresh tiny pipeline in memory; deterministic because each part has its own seed."""
    tokenizer = _tokenizer()
    vocab, _ = tiny_vocab()
    torch.manual_seed(0)
    unet = _unet()
    torch.manual_seed(1)
    vae = _vae()
    torch.manual_seed(2)
    text_encoder = _text_encoder(vocab)
    # Typed as Any: diffusers' annotations reject the documented None for the optional parts.
    components: dict[str, Any] = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": sd_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }
    return StableDiffusionPipeline(**components, requires_safety_checker=False)


def ensure_tiny_model(cache_dir: Path) -> Path:
    """The tiny model's folder under ``cache_dir/models``, building it on first use.

    The build goes to a temporary folder next to the target and is renamed into place, so a
    reader never sees half a model; if another process wins the race its (identical) build
    is kept and ours discarded.
    """
    target = Path(cache_dir) / "models" / TINY_MODEL_NAME
    if (target / _MODEL_INDEX).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_MODEL_NAME}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by several users.
    try:
        # The global RNG is borrowed for the seeded init; give the caller theirs back.
        with torch.random.fork_rng(devices=[]):
            pipe = build_tiny_pipeline()
        pipe.save_pretrained(tmp, safe_serialization=True)
        try:
            os.rename(tmp, target)
            log.info("built the tiny model in %s", target)
        except OSError:
            if not (target / _MODEL_INDEX).is_file():
                raise
            log.info("another process built the tiny model first; using %s", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
