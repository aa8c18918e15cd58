"""The current step's latents, handed from the pipeline's step callback to whoever makes previews.

The engine's step callback calls :func:`offer_latents` on the thread that runs the pipeline,
just before it calls the runner's ``on_step(done, total)`` on that same thread; the progress
publisher (``worker/runtime/progress.py``) takes them there. A thread-local keeps the step
callback's ``(done, total)`` signature as it is for every other caller, and lets the engine stay
ignorant of the runtime (this module imports nothing from the worker).
"""

from __future__ import annotations

import threading
from typing import Any

_tap = threading.local()


def offer_latents(latents: Any) -> None:
    """Called by the engine's step callback: the current latents, kept by reference only."""
    _tap.latents = latents


def take_latents() -> Any:
    """The latents offered on this thread since the last call (None if none)."""
    latents = getattr(_tap, "latents", None)
    _tap.latents = None
    return latents
