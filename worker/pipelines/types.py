"""Types the worker's rooms share: a job ready to join a batch, and the step callback.

This module imports nothing from the worker (as cog's ``eventtypes.py``), so the engine, the
model-family modules (``sdxl``, ``controlnet``) and the runtime can all import it without forming
an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from core.schemas import JobPayload

#: ``on_step(steps_done, total_steps)``: called after each denoising step. It may raise to
#: abort the batch (cancellation); its exception propagates from ``Engine.generate`` as is.
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class PreparedJob:
    """A payload with its uploads decoded and sized: ready to join a batch.

    Preparing is per job, so a broken upload fails only its own job, never its batch partners.
    """

    payload: JobPayload
    image: Image.Image | None = None
    mask: Image.Image | None = None
    #: One control map per ControlNet unit of the payload, sized and preprocessed.
    control: tuple[Image.Image, ...] = ()
