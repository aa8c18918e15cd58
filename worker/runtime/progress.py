"""Per-step progress (and optional previews) of a running batch, published to Redis.

The runner's step callback calls :meth:`ProgressPublisher.step` once per denoising step; the
publisher writes at most once per ``SFUMATO_PROGRESS_INTERVAL_S`` (always the last step), so a
fast model cannot flood Redis, and one pipelined round trip covers every job of the batch.

Previews are the cheap kind: the latents are projected to RGB with a fixed linear map (no VAE
decode), which costs a few microseconds per pixel of an image 8x smaller than the output. They
are made only for jobs that asked (``preview: true``) and at most once per
``SFUMATO_PREVIEW_INTERVAL_S``.

The latents reach us through ``worker.pipelines.latents_tap.offer_latents``, which the engine's step callback calls on
the thread that runs the pipeline, just before it calls the step callback on that same thread:
the step callback's ``(done, total)`` signature stays as it is for every other caller.

Publishing never fails a batch: errors are logged and the batch goes on.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.config import Settings
from core.progress import STREAM_MAXLEN, encode, progress_key
from core.schemas import JobPayload, ProgressView
from worker.pipelines.latents_tap import take_latents

log = logging.getLogger("sfumato.worker")

#: SD 1.x/2.x latent channels -> RGB in [-1, 1] (the widely used "cheap approximation";
#: good enough to see composition and colour, not detail).
LATENT_RGB = np.array(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ],
    dtype=np.float32,
)


def latents_to_png(latents: np.ndarray) -> bytes:
    """One image's latents ``(C, h, w)`` as a small PNG, by the linear approximation."""
    from PIL import Image

    if latents.shape[0] == LATENT_RGB.shape[0]:
        rgb = np.einsum("chw,cr->hwr", latents, LATENT_RGB)
    else:  # another latent space: show its first three channels, normalised
        rgb = np.moveaxis(latents[:3], 0, -1)
        rgb = rgb / max(float(np.abs(rgb).max()), 1e-6)
    pixels = np.clip((rgb + 1.0) * 127.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class ProgressPublisher:
    """Publishes one batch's progress; build one per pipeline call."""

    def __init__(self, connection: Any, settings: Settings, payloads: Sequence[JobPayload]) -> None:
        self.connection = connection
        self.settings = settings
        self.payloads = list(payloads)
        self._started = time.monotonic()
        self._next_publish = 0.0
        self._next_preview = 0.0
        self._wants_preview = any(p.preview for p in self.payloads)

    def step(self, done: int, total: int) -> None:
        """Record step ``done`` of ``total``; publishes when the interval has passed."""
        latents = take_latents()
        now = time.monotonic()
        last = total > 0 and done >= total
        if now < self._next_publish and not last:
            return
        self._next_publish = now + self.settings.progress_interval_s
        try:
            previews = self._previews(latents, now)
            self._publish(done, total, now, previews)
        except Exception as exc:  # progress is a courtesy; the batch must go on
            log.warning("could not publish progress: %s", exc)

    def _previews(self, latents: Any, now: float) -> dict[str, str]:
        """Job id -> PNG data URL of its first image, when due and the latents fit the batch."""
        if not self._wants_preview or latents is None or now < self._next_preview:
            return {}
        self._next_preview = now + self.settings.preview_interval_s
        array = latents.detach().float().cpu().numpy() if hasattr(latents, "detach") else np.asarray(latents)
        if array.ndim != 4 or array.shape[0] != sum(p.n for p in self.payloads):
            return {}  # a batch split after out-of-memory: indices no longer map to jobs
        previews, start = {}, 0
        for payload in self.payloads:
            if payload.preview:
                png = latents_to_png(array[start])
                previews[payload.job_id] = "data:image/png;base64," + base64.b64encode(png).decode()
            start += payload.n
        return previews

    def _publish(self, done: int, total: int, now: float, previews: dict[str, str]) -> None:
        elapsed = now - self._started
        eta = elapsed / done * (total - done) if done > 0 and total >= done else None
        ttl = int(self.settings.job_timeout_s + self.settings.result_ttl_s)
        with self.connection.pipeline(transaction=False) as pipe:
            for payload in self.payloads:
                view = ProgressView(
                    step=done,
                    total=total,
                    eta_s=None if eta is None else round(eta, 3),
                    elapsed_s=round(elapsed, 3),
                    updated_at=time.time(),
                    preview=previews.get(payload.job_id),
                )
                key = progress_key(self.settings, payload.job_id)
                pipe.xadd(key, encode(view), maxlen=STREAM_MAXLEN, approximate=True)
                pipe.expire(key, ttl)
            pipe.execute()
