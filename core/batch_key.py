"""Which jobs may share one pipeline call.

Everything the diffusers call takes as ONE value for the whole batch is in the key; what may
vary per image (prompt, negative prompt, seed, n) is not. Workers batch only jobs with equal
keys, so co-batching never changes what a request asked for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from core.schemas import JobPayload


@dataclass(frozen=True)
class BatchKey:
    model: str
    mode: str
    width: int
    height: int
    steps: int
    scheduler: str
    guidance_scale: float
    clip_skip: int
    strength: float | None
    exact: bool = False
    loras: tuple[tuple[str, float], ...] = ()
    #: (name, scale, start, end, preprocess) per ControlNet unit, in request order (it pairs
    #: names with the per-image control images, which vary inside a batch).
    controlnets: tuple[tuple[str, float, float, float, str], ...] = ()
    #: SDXL refiner handoff point (fraction of the steps the base runs); None: no refiner.
    refiner_switch_at: float | None = None

    @classmethod
    def of(cls, payload: JobPayload) -> BatchKey:
        return cls(
            model=payload.model,
            mode=payload.mode,
            width=payload.width,
            height=payload.height,
            steps=payload.steps,
            scheduler=payload.scheduler,
            guidance_scale=payload.guidance_scale,
            clip_skip=payload.clip_skip,
            strength=payload.strength,
            exact=payload.exact,
            # Sorted so that the order a client listed its LoRAs in never splits a batch.
            loras=tuple(sorted((lora.name, lora.scale) for lora in payload.loras)),
            controlnets=tuple((c.name, c.scale, c.start, c.end, c.preprocess) for c in payload.controlnet),
            refiner_switch_at=None if payload.refiner is None else payload.refiner.switch_at,
        )

    @property
    def classifier_free_guidance(self) -> bool:
        """Whether the batch runs the unconditional UNet pass: only when ``guidance_scale > 1``.

        Every pipeline class Sfumato calls (SD and SDXL txt2img, img2img, inpainting, ControlNet)
        skips it at or below 1, so such a batch costs one UNet row per image instead of two
        (tests/integration/test_fewstep.py counts them). ``guidance_scale`` itself stays in the key:
        two jobs at 0.5 and 1.0 both skip the pass, yet they must not share a call, because a
        guidance-distilled UNet (LCM models, ``time_cond_proj_dim``) embeds the scale itself and
        draws differently, and one call takes one scale.
        """
        return self.guidance_scale > 1

    @property
    def unet_rows_per_image(self) -> int:
        """UNet batch rows one image of this batch costs per step: 2 with guidance, else 1 (at
        most: a guidance-distilled UNet takes 1 row at any scale, which only the worker knows)."""
        return 2 if self.classifier_free_guidance else 1

    def digest(self) -> str:
        """A short stable string for Redis keys and logs (bounded: never a prompt)."""
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: The field on the RQ job hash that workers read (in a Lua script) to find batch partners.
BATCH_TAG_FIELD = "sfumato_batch"


def batch_tag(payload: JobPayload) -> str:
    """``"<digest>:<images>"``: what a worker scanning the queue needs to know about a job."""
    return f"{BatchKey.of(payload).digest()}:{payload.n}"
