"""SD 1.5's architecture with random bfloat16 weights, built in seconds for the single-file test.

Why: :func:`bench.sd15_random.build_sd15_random` constructs its ~1.07 B parameters the usual way,
each layer initialised in float32 (kaiming on every convolution and linear layer, CLIP's own
scheme) and then cast to bfloat16: a 4 GiB float32 peak and the slowest part of
``tests/integration/test_single_file_sd15.py`` on a loaded 2-core CI machine. That test needs the
*architecture* (the same classes with the same configs, hence the same keys and shapes) and
weights that are distinct, finite and of a sane scale; it does not need torch's initialisers.
So the same builder runs with every parameter on the meta device (no storage, no init), then
each one is filled once, straight in bfloat16, from one pool of 64 Mi standard normals (drawing
a billion normals one tensor at a time took ~10x longer than slicing a pool on the loaded CI
machine): each tensor takes the pool's values from its own offset, so no two tensors are equal,
scaled as follows:

* weights (2-D and up): std ``1/sqrt(3 * fan_in)``, the spread of torch's default
  ``kaiming_uniform_(a=sqrt(5))``, so activations keep their scale through the depth;
* normalisation weights ``1 + 0.1 * N(0, 1)`` and every bias ``0.02 * N(0, 1)``: near torch's
  ones and zeros (stable) but never two equal tensors, so a loader that swapped two norms of
  the same shape fails an equality check that torch's all-ones init could not see.

Buffers (CLIP's ``position_ids``) are built for real, as the builder makes them.
"""

from __future__ import annotations

import math

import torch
from accelerate import init_empty_weights
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from torch import nn

from bench.sd15_random import build_sd15_random

_NORMS = (nn.GroupNorm, nn.LayerNorm)
#: Normals in the pool: more than the largest tensor (CLIP's token embedding, 37.9 M values).
_POOL = 1 << 26
#: How far each tensor's offset moves past the previous tensor's end (odd, so offsets rarely repeat).
_STRIDE = 1_000_003


class _Pool:
    """Hands out slices of one bfloat16 normal pool, each from a new offset."""

    def __init__(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.values = torch.randn(_POOL, generator=generator, dtype=torch.bfloat16)
        self.offset = 0

    def take(self, shape: torch.Size) -> torch.Tensor:
        count = math.prod(shape)
        if self.offset + count > _POOL:
            self.offset %= _POOL - count
        start = self.offset
        self.offset += count + _STRIDE
        return self.values[start : start + count].view(shape)


def _draw(shape: torch.Size, module: nn.Module, name: str, pool: _Pool) -> torch.Tensor:
    """A new tensor of ``shape`` (the pool slice is only read) at the scale the docstring gives."""
    values = pool.take(shape)
    if isinstance(module, _NORMS) and name == "weight":
        return values * 0.1 + 1.0
    if len(shape) < 2:
        return values * 0.02
    return values * (1.0 / math.sqrt(3 * math.prod(shape[1:])))


def sd15_random_bf16(seed: int = 0) -> StableDiffusionPipeline:
    """``build_sd15_random()``'s pipeline (same modules and configs) with weights drawn as the
    module docstring says, deterministically from ``seed``; nothing is ever float32."""
    with init_empty_weights(include_buffers=False):
        pipe = build_sd15_random()
    pool = _Pool(seed)
    for component in (pipe.unet, pipe.vae, pipe.text_encoder):
        for module in component.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                drawn = _draw(param.shape, module, name, pool)
                module._parameters[name] = nn.Parameter(drawn, requires_grad=False)
        component.eval()
    return pipe
