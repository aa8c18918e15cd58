"""The attention backend, ``SFUMATO_ATTENTION=auto|xformers|sdpa|sliced``.

* ``auto``: xformers on CUDA when it is importable, otherwise PyTorch SDPA.
* ``sdpa``: ``AttnProcessor2_0`` set explicitly. ``set_default_attn_processor()`` is not the
  way back to SDPA: in diffusers 0.42 it installs the slower classic processor.
* ``sliced``: attention computed in slices; least memory, slowest.
* ``xformers``: explicit; unavailable (CPU, or not installed) is a start-up error, never a
  silent fallback, so an operator who asked for it learns at load time.

:func:`check_attention` runs before weights are loaded (fail fast); :func:`apply_attention`
after, on the resident modules, so every pipeline derived from them inherits the backend.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from core.errors import ModelUnavailable

log = logging.getLogger(__name__)

AttentionSetting = Literal["auto", "xformers", "sdpa", "sliced"]
Backend = Literal["xformers", "sdpa", "sliced"]


def _xformers_installed() -> bool:
    return importlib.util.find_spec("xformers") is not None


def check_attention(setting: AttentionSetting, device: torch.device) -> Backend:
    """The backend ``setting`` means on ``device``; raises ModelUnavailable if it cannot run."""
    if setting == "auto":
        return "xformers" if device.type == "cuda" and _xformers_installed() else "sdpa"
    if setting == "xformers":
        if device.type != "cuda":
            raise ModelUnavailable(
                f"SFUMATO_ATTENTION=xformers needs a CUDA device, but the worker runs on {device.type}; "
                "use SFUMATO_ATTENTION=sdpa (or auto)"
            )
        if not _xformers_installed():
            raise ModelUnavailable(
                "SFUMATO_ATTENTION=xformers but xformers is not installed; install the 'cuda' extra "
                "(pip install 'sfumato-server[cuda]') or use SFUMATO_ATTENTION=sdpa"
            )
    return setting


def apply_attention(pipe: DiffusionPipeline, backend: Backend, *, explicit: bool) -> Backend:
    """Install ``backend`` on the pipeline's UNet and VAE; returns the backend in force.

    With ``explicit`` False (the 'auto' setting) an xformers failure falls back to SDPA with
    a warning; with True it raises ModelUnavailable.
    """
    if backend == "xformers":
        try:
            pipe.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as exc:  # xformers raises ModuleNotFoundError, ValueError, RuntimeError...
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if explicit:
                raise ModelUnavailable(f"xformers attention could not be enabled: {reason}") from exc
            log.warning("xformers attention unavailable (%s); using SDPA", reason)
            backend = "sdpa"
    if backend == "sliced":
        pipe.enable_attention_slicing()
        return "sliced"
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "set_attn_processor"):
            module.set_attn_processor(AttnProcessor2_0())
    return "sdpa"
