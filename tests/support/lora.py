"""Tiny LoRAs for the built-in tiny model, made the way a trainer makes them (peft + diffusers).

``make_lora`` adds peft adapters to a fresh tiny UNet (and optionally its text encoder),
fills the LoRA matrices with seeded noise (a freshly initialised LoRA has B = 0 and would
change nothing), and writes ``<name>.safetensors`` with
``StableDiffusionPipeline.save_lora_weights``: the same file layout diffusers training
scripts produce, so the worker loads it through the same path as a real LoRA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict

from worker.builtin.tiny import build_tiny_pipeline

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _perturb(module: torch.nn.Module, generator: torch.Generator, amplitude: float) -> None:
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * amplitude)


def make_lora(
    folder: Path,
    name: str,
    seed: int,
    *,
    text_encoder: bool = False,
    rank: int = 4,
    amplitude: float = 0.1,
    unet_targets: list[str] | None = None,
) -> Path:
    """Write ``folder/<name>.safetensors``, a LoRA for the tiny model; returns its path.

    Deterministic in ``seed``. With ``text_encoder`` it also adapts the text encoder (so it
    changes prompt embeddings, which the prompt cache must then key on). ``unet_targets``
    replaces the attention projections adapted by default (e.g. ``conv1``/``conv2`` for a
    LoRA on convolutions, what LyCORIS calls LoCon).

    ``amplitude`` 0.1 makes the weight delta small next to the base weights, as in a trained
    LoRA, yet moves pixels by up to ~0.1-0.3 at scale 1. Measured: at 0.3 the delta is as large
    as the base weights, the network's gain grows, and batch-size rounding (~2e-6 on the base
    model) is amplified to ~2-3e-5 after 4 Euler a steps, past the repo's 1e-5 bound.
    """
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        pipe = build_tiny_pipeline()
    pipe.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=unet_targets or UNET_TARGETS, init_lora_weights=True)
    )
    _perturb(pipe.unet, generator, amplitude)
    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    text_layers: Any = None
    if text_encoder:
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TEXT_TARGETS, init_lora_weights=True)
        pipe.text_encoder.add_adapter(config)
        _perturb(pipe.text_encoder, generator, amplitude)
        text_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder))
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=text_layers,
        weight_name=f"{name}.safetensors",
        safe_serialization=True,
    )
    return folder / f"{name}.safetensors"
