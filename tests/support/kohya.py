"""Rewrite a diffusers/peft LoRA file in the kohya / A1111 layout, for the tiny model.

The kohya layout (sd-scripts, what civitai serves and A1111 reads) names each adapted module
``lora_unet_<module path with _>`` or ``lora_te_text_model_<path with _>`` and stores
``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha`` (the delta is scaled by
``alpha / rank``). A file converted here with ``alpha`` other than the rank keeps the same
delta: the up matrices are multiplied by ``rank / alpha`` to compensate, so a kohya file and
its diffusers source must give the same image. LoRAs on convolutions (LoCon) use the same key
names with 4-d weights.

``lycoris_file`` writes a LoHa or LoKr file (``hada_w1_a`` ... / ``lokr_w1`` ...) with the key
names LyCORIS uses, for the formats the worker must recognise and refuse clearly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

#: Suffixes of a down matrix in the layouts diffusers writes (old and peft style).
_DOWN_SUFFIXES = (".lora.down.weight", ".lora_linear_layer.down.weight", ".lora_A.weight")
_UP_OF = {".lora.down.weight": ".lora.up.weight", ".lora_linear_layer.down.weight": ".lora_linear_layer.up.weight"}


def _kohya_prefix(module: str) -> str:
    """``unet.down_blocks.0...`` -> ``lora_unet_down_blocks_0_...``; text encoder likewise."""
    root, _, path = module.partition(".")
    if root == "unet":
        return "lora_unet_" + path.replace(".", "_")
    if root == "text_encoder":
        # kohya names CLIP modules from CLIPTextModel, whose layers live under text_model.
        return "lora_te_text_model_" + path.replace(".", "_")
    raise ValueError(f"unexpected module {module!r}")


def to_kohya(source: Path, target: Path, *, alpha: float | None = None) -> Path:
    """Write ``target``: ``source`` (a diffusers LoRA file) in the kohya layout; returns it."""
    tensors = load_file(str(source))
    out: dict[str, torch.Tensor] = {}
    for key, down in tensors.items():
        suffix = next((s for s in _DOWN_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            continue
        module = key[: -len(suffix)]
        up = tensors[module + _UP_OF.get(suffix, ".lora_B.weight")]
        rank = down.shape[0]
        scale_alpha = float(rank if alpha is None else alpha)
        prefix = _kohya_prefix(module)
        out[f"{prefix}.lora_down.weight"] = down.contiguous()
        out[f"{prefix}.lora_up.weight"] = (up * (rank / scale_alpha)).contiguous()
        out[f"{prefix}.alpha"] = torch.tensor(scale_alpha)
    if not out:
        raise ValueError(f"{source} holds no LoRA matrices")
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(target), metadata={"ss_network_module": "networks.lora"})
    return target


def lycoris_file(target: Path, kind: str, *, rank: int = 4) -> Path:
    """Write a small LoHa (``kind="loha"``) or LoKr (``"lokr"``) file for one tiny-UNet layer."""
    prefix = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    generator = torch.Generator().manual_seed(5)

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * 0.1

    if kind == "loha":
        tensors = {f"{prefix}.hada_w1_a": noise(64, rank), f"{prefix}.hada_w1_b": noise(rank, 64)}
        tensors |= {f"{prefix}.hada_w2_a": noise(64, rank), f"{prefix}.hada_w2_b": noise(rank, 64)}
    elif kind == "lokr":
        tensors = {f"{prefix}.lokr_w1": noise(8, 8), f"{prefix}.lokr_w2": noise(8, 8)}
    else:
        raise ValueError(kind)
    tensors[f"{prefix}.alpha"] = torch.tensor(float(rank))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target))
    return target
