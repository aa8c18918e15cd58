"""Write a diffusers SD/SDXL pipeline as ONE original-layout (CompVis / A1111) checkpoint.

Why: the single-file loader (worker/pipelines/checkpoints.py) must be proven on files in the
layout users download from civitai or export from A1111, without downloading one. This is the
inverse of diffusers' single-file conversion, written for any block count (the built-in tiny
model has two UNet blocks with one layer each; SD 1.5 has four with two), after the mapping
in diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py``:

* UNet -> ``model.diffusion_model.*``: down block ``i`` layer ``j`` is ``input_blocks.{i*(L+1)+j+1}``
  (``.0`` resnet, ``.1`` transformer), its downsampler ``input_blocks.{(i+1)*(L+1)}.0.op``; up block
  ``i`` layer ``j <= L`` is ``output_blocks.{i*(L+1)+j}``, its upsampler after the last; resnets
  rename ``norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut`` to
  ``in_layers.0/in_layers.2/emb_layers.1/out_layers.0/out_layers.3/skip_connection``.
* VAE -> ``first_stage_model.*``: ``down.i.block.j``, ``up.{n-1-i}.block.j`` (reversed), mid
  ``block_1/attn_1/block_2``, attention ``q/k/v/proj_out`` as 1x1 convolutions.
* CLIP text encoder -> ``cond_stage_model.transformer.text_model.*`` (SD 1.x keys as they are).
* The DDPM schedule buffers (``betas``, ``alphas_cumprod``, ...) that real files carry too, so a
  loader strict about unexpected keys fails here as it would on a real file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    return key


def _unet_prefixes(config: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(diffusers prefix, LDM prefix, inner renames) for every block of the UNet."""
    blocks = len(config["down_block_types"])
    layers = config["layers_per_block"]
    table: list[tuple[str, str, dict[str, str]]] = [
        ("time_embedding.linear_1", "time_embed.0", {}),
        ("time_embedding.linear_2", "time_embed.2", {}),
        ("add_embedding.linear_1", "label_emb.0.0", {}),
        ("add_embedding.linear_2", "label_emb.0.2", {}),
        ("conv_in", "input_blocks.0.0", {}),
        ("conv_norm_out", "out.0", {}),
        ("conv_out", "out.2", {}),
        ("mid_block.resnets.0", "middle_block.0", _RESNET),
        ("mid_block.attentions.0", "middle_block.1", {}),
        ("mid_block.resnets.1", "middle_block.2", _RESNET),
    ]
    for i in range(blocks):
        for j in range(layers):
            ldm = i * (layers + 1) + j + 1
            table.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{ldm}.0", _RESNET))
            table.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{ldm}.1", {}))
        if i < blocks - 1:
            table.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * (layers + 1)}.0.op", {}))
        for j in range(layers + 1):
            ldm = i * (layers + 1) + j
            table.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{ldm}.0", _RESNET))
            table.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{ldm}.1", {}))
    return table


def _upsampler_index(config: dict[str, Any], block: int) -> str:
    # The upsampler follows the block's last resnet, after its transformer when it has one.
    layers = config["layers_per_block"]
    has_attention = config["up_block_types"][block].startswith("CrossAttn")
    return f"output_blocks.{block * (layers + 1) + layers}.{2 if has_attention else 1}.conv"


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict as ``model.diffusion_model.*`` keys."""
    table = _unet_prefixes(config)
    blocks = len(config["up_block_types"])
    table += [(f"up_blocks.{i}.upsamplers.0.conv", _upsampler_index(config, i), {}) for i in range(blocks - 1)]
    table.sort(key=lambda entry: -len(entry[0]))  # longest prefix first: resnets.1 before resnets.10
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for new, old, inner in table:
            if key.startswith(new + "."):
                rest = _rename(key[len(new) + 1 :], inner)
                out[f"model.diffusion_model.{old}.{rest}"] = value
                break
        else:
            raise KeyError(f"no LDM name for UNet key {key!r}")
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict as ``first_stage_model.*`` keys."""
    blocks = len(config["down_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.replace("conv_norm_out", "norm_out")
        name = name.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        if "mid_block.attentions.0." in name:
            head, tail = name.split("mid_block.attentions.0.")
            name = head + "mid.attn_1." + _rename(tail, _VAE_ATTENTION)
            if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        name = name.replace("down_blocks.", "down.").replace("downsamplers.0", "downsample")
        if name.startswith("decoder.up_blocks."):
            index, tail = name.removeprefix("decoder.up_blocks.").split(".", 1)
            name = f"decoder.up.{blocks - 1 - int(index)}.{tail.replace('upsamplers.0', 'upsample')}"
        parts = name.split(".resnets.")
        if len(parts) == 2:
            number, tail = parts[1].split(".", 1)
            name = f"{parts[0]}.block.{number}.{_rename(tail, _VAE_RESNET)}"
        elif ".block_" in name:
            head, tail = name.split(".block_", 1)
            number, rest = tail.split(".", 1)
            name = f"{head}.block_{number}.{_rename(rest, _VAE_RESNET)}"
        out[f"first_stage_model.{name}"] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel state dict as SD 1.x ``cond_stage_model.transformer.*`` keys."""
    out = {}
    for key, value in state.items():
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        out[f"cond_stage_model.transformer.{name}"] = value
    if "cond_stage_model.transformer.text_model.embeddings.position_ids" not in out:
        width = out["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"].shape[0]
        out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(width)[None]
    return out


def schedule_buffers(scheduler_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The DDPM buffers an LDM checkpoint stores next to its weights (ignored by loaders)."""
    steps = int(scheduler_config.get("num_train_timesteps", 1000))
    start, end = float(scheduler_config["beta_start"]), float(scheduler_config["beta_end"])
    betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return {
        "betas": betas.float(),
        "alphas_cumprod": alphas_cumprod.float(),
        "alphas_cumprod_prev": torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]]).float(),
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt().float(),
    }


def pipeline_to_ldm(pipe: Any) -> dict[str, torch.Tensor]:
    """An SD 1.x-style diffusers pipeline's UNet, VAE and text encoder as one LDM state dict."""
    state: dict[str, torch.Tensor] = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config)))
    state.update(vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    state.update(clip_to_ldm(pipe.text_encoder.state_dict()))
    state.update(schedule_buffers(dict(pipe.scheduler.config)))
    return state


def write_single_file(pipe: Any, path: Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Save ``pipe`` as the single-file checkpoint ``path`` (``.safetensors``); returns ``path``."""
    state = {k: v.detach().contiguous().clone() for k, v in pipeline_to_ldm(pipe).items()}
    state.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def with_inpainting_unet(pipe: Any, folder: Path, seed: int = 0) -> Any:
    """``pipe`` with a 9-input-channel UNet of the same architecture (the layout of the SD
    inpainting models: latents, mask, masked-image latents), random weights from ``seed``; also
    saved as the diffusers folder ``folder`` (its configs are the registry's ``config`` for a
    file of this architecture, its weights the reference the file must match)."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    torch.manual_seed(seed)
    pipe.unet = UNet2DConditionModel.from_config({**dict(pipe.unet.config), "in_channels": 9})
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


# --- synthetic headers for detection tests ---------------------------------------------------

#: Keys (with shapes of the right rank) that each family's real files carry and detection reads.
_TEXT_KEYS: dict[str, dict[str, list[int]]] = {
    "sd1": {"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": [77, 8]},
    "sd2": {
        "cond_stage_model.model.positional_embedding": [77, 8],
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": [24, 8],
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": [8, 1024],
    },
    "sdxl": {
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": [77, 8],
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": [8],
        "model.diffusion_model.label_emb.0.0.weight": [8, 2816],
    },
    "sdxl-refiner": {
        "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": [8],
        "model.diffusion_model.label_emb.0.0.weight": [8, 2560],
    },
}


def synthetic_keys(family: str, *, channels: int = 4, v_pred: bool = False) -> dict[str, list[int]]:
    """Tensor name -> shape for a minimal original-layout file of ``family`` ("none": no text encoder)."""
    keys: dict[str, list[int]] = {
        "model.diffusion_model.input_blocks.0.0.weight": [4, channels, 3, 3],
        "model.diffusion_model.out.2.weight": [4, 4, 3, 3],
        "first_stage_model.decoder.conv_in.weight": [4, 4, 3, 3],
        "alphas_cumprod": [1000],
    }
    keys.update(_TEXT_KEYS.get(family, {}))
    if v_pred:
        keys["v_pred"] = [0]
    return keys


def write_header_file(path: Path, shapes: dict[str, list[int]]) -> Path:
    """A valid safetensors file with zero-filled float16 tensors of ``shapes`` (small on disk)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        count = 1
        for side in shape:
            count *= side
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + 2 * count]}
        offset += 2 * count
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(offset))
    return path
