"""Where and in what precision the model runs: ``SFUMATO_DEVICE``, ``SFUMATO_DTYPE``,
``SFUMATO_TORCH_THREADS``.

Resolved once at load time so a bad setting fails the worker's start-up with a clear
:class:`ModelUnavailable` instead of failing every job later.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from core.errors import ModelUnavailable

log = logging.getLogger(__name__)

DeviceSetting = Literal["auto", "cpu", "cuda"]
DtypeSetting = Literal["auto", "float32", "bfloat16", "float16"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(setting: DeviceSetting) -> torch.device:
    """'auto' is CUDA when a GPU is visible, else CPU; an explicit 'cuda' without one fails."""
    cuda = torch.cuda.is_available()
    if setting == "auto":
        return torch.device("cuda" if cuda else "cpu")
    if setting == "cuda" and not cuda:
        raise ModelUnavailable(
            "SFUMATO_DEVICE=cuda but no CUDA GPU is visible to torch; "
            "use SFUMATO_DEVICE=cpu or auto, or check the GPU driver and CUDA_VISIBLE_DEVICES"
        )
    return torch.device(setting)


def resolve_dtype(setting: DtypeSetting, device: torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA (half the memory, tensor cores) and float32 on CPU.

    float16 on CPU is allowed but slow and poorly supported; bfloat16 is the CPU choice for
    large models.
    """
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype = _DTYPES[setting]
    if dtype is torch.float16 and device.type == "cpu":
        log.warning("float16 on CPU is slow and some ops lack kernels; prefer bfloat16 or float32")
    return dtype


def apply_torch_threads(threads: int | None) -> None:
    """Pin torch's intra-op thread count (None keeps torch's default: all cores)."""
    if threads is not None:
        torch.set_num_threads(threads)
