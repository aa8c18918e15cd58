"""Write SD 2.x, SDXL base and SDXL refiner pipelines as ONE original-layout checkpoint each.

Why: :mod:`tests.support.single_file` proves the SD 1.x layout; these families differ in their
text encoders, which the original checkpoints store in OpenCLIP's layout, not transformers':

* SD 2.x: ``cond_stage_model.model.*`` (OpenCLIP ViT-H).
* SDXL base: ``conditioner.embedders.0.transformer.text_model.*`` (CLIP ViT-L, transformers' keys)
  and ``conditioner.embedders.1.model.*`` (OpenCLIP ViT-bigG, with ``text_projection``).
* SDXL refiner: ``conditioner.embedders.0.model.*`` (the bigG encoder) only.

The OpenCLIP layout is the inverse of diffusers' ``convert_open_clip_checkpoint``
(diffusers/loaders/single_file_utils.py): ``token_embedding.weight``, ``positional_embedding``,
``ln_final``, ``text_projection`` stored as ``[width, projection]`` (the transpose of
transformers' ``text_projection.weight``; diffusers splits ``in_proj`` at its ``shape[0]``) and
per layer ``transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias (q, k, v concatenated),
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``.

SD 2.x uses the penultimate layer of its 24-layer encoder: the diffusers text encoder has 23
layers, real files carry all 24 and diffusers drops the last one (it ignores unexpected keys).
``unused_last_layer`` writes that extra layer with random weights, so a loader that ran it
would draw a different image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.support.single_file import clip_to_ldm, schedule_buffers, unet_to_ldm, vae_to_ldm

_LAYER = {
    "layer_norm1": "ln_1",
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_ldm(encoder: Any, prefix: str, *, unused_last_layer: bool = False) -> dict[str, torch.Tensor]:
    """A transformers CLIP text encoder (with or without projection) as OpenCLIP keys under
    ``prefix`` (e.g. ``cond_stage_model.model.``); KeyError for a weight with no OpenCLIP name."""
    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    state.pop("embeddings.position_ids", None)  # a buffer OpenCLIP does not store
    width = int(state["embeddings.token_embedding.weight"].shape[1])
    out = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    generator = torch.Generator().manual_seed(0)
    projection = state.pop("text_projection.weight", None)
    # SD 2.x's encoder has no projection in diffusers, but its files carry OpenCLIP's (unused).
    out[prefix + "text_projection"] = (
        projection.T if projection is not None else torch.randn(width, width, generator=generator)
    )
    layers = int(encoder.config.num_hidden_layers)
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(parts)
            for new, old in _LAYER.items():
                out[f"{dst}{old}.{kind}"] = state.pop(f"{src}{new}.{kind}")
    if state:
        raise KeyError(f"no OpenCLIP name for text encoder keys {sorted(state)[:5]}")
    if unused_last_layer:
        last = f"{prefix}transformer.resblocks.{layers - 1}."
        for key in [k for k in out if k.startswith(last)]:
            value = out[key]
            out[key.replace(last, f"{prefix}transformer.resblocks.{layers}.")] = torch.randn(
                value.shape, generator=generator
            )
    return out


def sd2_to_ldm(pipe: Any) -> dict[str, torch.Tensor]:
    """An SD 2.x-style pipeline as one LDM state dict (text encoder in OpenCLIP layout, plus the
    unused last layer real SD 2.x files carry)."""
    state = unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config))
    state.update(vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    state.update(open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model.", unused_last_layer=True))
    state.update(schedule_buffers(dict(pipe.scheduler.config)))
    return state


def sdxl_to_ldm(pipe: Any) -> dict[str, torch.Tensor]:
    """An SDXL base pipeline as one LDM state dict: CLIP-L at ``conditioner.embedders.0.transformer``,
    OpenCLIP bigG at ``conditioner.embedders.1.model``."""
    state = unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config))
    state.update(vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    for key, value in clip_to_ldm(pipe.text_encoder.state_dict()).items():
        state["conditioner.embedders.0.transformer." + key.removeprefix("cond_stage_model.transformer.")] = value
    state.update(open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    state.update(schedule_buffers(dict(pipe.scheduler.config)))
    return state


def refiner_to_ldm(
    unet: Any, vae: Any, text_encoder_2: Any, scheduler_config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """An SDXL refiner as one LDM state dict: its UNet, the VAE and the bigG encoder it shares
    with the base (``conditioner.embedders.0.model``), as stabilityai's refiner file has them."""
    state = unet_to_ldm(unet.state_dict(), dict(unet.config))
    state.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    state.update(open_clip_to_ldm(text_encoder_2, "conditioner.embedders.0.model."))
    state.update(schedule_buffers(scheduler_config))
    return state


def save_ldm(state: dict[str, torch.Tensor], path: Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Save an LDM state dict (plus ``extra`` keys, e.g. a ``v_pred`` marker) as ``path``."""
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    tensors.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def sd2_style_pipeline(tiny_folder: Path, seed: int = 0) -> Any:
    """The built-in tiny model with an OpenCLIP-like text encoder (GELU, as ViT-H), random weights
    from ``seed``: an SD 2.x-shaped pipeline (its text encoder width is the UNet's, 32)."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None, requires_safety_checker=False)
    config = CLIPTextConfig.from_dict({**pipe.text_encoder.config.to_dict(), "hidden_act": "gelu"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe.text_encoder = CLIPTextModel(config).eval()
    return pipe


def sdxl_distinct_widths(seed: int = 20) -> Any:
    """The built-in tiny SDXL with a narrower first text encoder (16 wide, the second stays 32).

    Why: diffusers' single-file loader tells SDXL's two encoders apart by width (CLIP-L 768,
    bigG 1280): an encoder whose width matches ``conditioner.embedders.0``'s is loaded from
    there. The built-in tiny SDXL has two 32-wide encoders, so from one file its
    ``text_encoder_2`` would get CLIP-L's weights; real SDXL files never meet this. The second
    encoder keeps its width so the built-in tiny refiner still fits this base.
    """
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from worker.builtin.tiny_sdxl import build_tiny_sdxl

    with torch.random.fork_rng(devices=[]):
        pipe = build_tiny_sdxl()
        torch.manual_seed(seed)
        narrow = {**pipe.text_encoder.config.to_dict(), "hidden_size": 16, "intermediate_size": 32}
        pipe.text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(narrow)).eval()
        width = 16 + int(pipe.text_encoder_2.config.hidden_size)
        pipe.unet = UNet2DConditionModel.from_config({**dict(pipe.unet.config), "cross_attention_dim": width})
    return pipe
