"""Keep diffusers' ``clip_skip`` working with transformers 5's CLIP text encoder.

diffusers 0.42.1 applies clip_skip as ``text_encoder.text_model.final_layer_norm(...)``
(``StableDiffusionPipeline.encode_prompt``), but transformers 5 flattened ``CLIPTextModel``:
``embeddings``, ``encoder`` and ``final_layer_norm`` now hang off the model itself and there is
no ``text_model``. Any request with clip_skip > 0 then fails with an AttributeError.

The shim gives the encoder a ``text_model`` view that forwards attribute reads to the encoder.
It is stored outside ``nn.Module``'s registry, so it adds no parameters, never appears in a
state dict and cannot create a module cycle. Remove it once diffusers reads the new layout.
"""

from __future__ import annotations

from typing import Any

import torch


class _TextModelView:
    """Read-only stand-in for the old ``CLIPTextModel.text_model`` sub-module."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self._encoder = encoder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)


def ensure_text_model_alias(text_encoder: torch.nn.Module | None) -> bool:
    """Give a flattened CLIP text encoder a ``text_model`` view; True if one was added."""
    if text_encoder is None or hasattr(text_encoder, "text_model"):
        return False
    if not hasattr(text_encoder, "final_layer_norm"):
        return False  # not the layout this shim knows; let diffusers report it
    # object.__setattr__: nn.Module.__setattr__ would not accept a plain object as a child,
    # and an instance attribute is found before nn.Module.__getattr__ is consulted.
    object.__setattr__(text_encoder, "text_model", _TextModelView(text_encoder))
    return True
