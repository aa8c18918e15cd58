"""A1111 sampler and scheduler names -> Sfumato's scheduler names, and the lists A1111 serves.

Since A1111 1.9 a sampler ("DPM++ 2M") and a noise schedule ("Karras") are two fields; older
clients send one combined name ("DPM++ 2M Karras"). Sfumato's schedulers are the combined
kind (core/scheduler_names.py), so the two fields are joined here: ``automatic`` (or no
scheduler) is the sampler's default schedule as A1111 1.9+ has it (Karras for ``DPM++ 2M``),
``uniform`` (``normal``, ``simple``) the plain one, ``karras`` the sampler's Karras variant where Sfumato has one. Any
other pairing is a 422 naming ``scheduler``.
"""

from __future__ import annotations

from typing import Any

from core.errors import InvalidRequest, ServiceError
from core.scheduler_names import SCHEDULER_DISPLAY_NAMES, canonical_scheduler

#: A1111 schedule names (lower-cased) that leave the sampler its own default schedule.
AUTOMATIC = frozenset({"", "automatic"})
#: The plain schedule: the model's timesteps evenly spaced, no Karras spacing. A1111's "Uniform",
#: and its "Normal" and "Simple" (ported from ComfyUI), differ from it and each other only in
#: rounding; SillyTavern sends "normal" until its user picks another.
UNIFORM = frozenset({"uniform", "normal", "simple"})
KARRAS = "karras"
#: Samplers whose default schedule is Karras since A1111 1.9, the version that split the schedule
#: into its own ``scheduler`` field (modules/sd_samplers_kdiffusion.py: ``DPM++ 2M`` has
#: ``{'scheduler': 'karras'}``), so "DPM++ 2M" + "Automatic" draws what A1111 draws.
AUTOMATIC_IS_KARRAS = frozenset({"dpmpp_2m"})
#: What ``GET /sdapi/v1/schedulers`` lists: the schedules a request can combine with.
SCHEDULES: tuple[dict[str, Any], ...] = (
    {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False},
    {
        "name": "uniform",
        "label": "Uniform",
        "aliases": ["normal", "simple"],
        "default_rho": -1,
        "need_inner_model": True,
    },
    {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False},
)


def _karras_variant(canonical: str) -> str | None:
    if canonical.endswith("_karras"):
        return canonical
    variant = f"{canonical}_karras"
    return variant if variant in SCHEDULER_DISPLAY_NAMES else None


def scheduler_for(sampler_name: str | None, schedule: str | None) -> str | None:
    """The Sfumato scheduler for an A1111 sampler + schedule; None: the model's default."""
    schedule_key = (schedule or "").strip().lower()
    if sampler_name is None or not sampler_name.strip():
        if schedule_key not in AUTOMATIC:
            raise InvalidRequest(
                f"scheduler {schedule!r} needs a sampler_name to apply to; send sampler_name as well",
                param="scheduler",
            )
        return None
    try:
        canonical = canonical_scheduler(sampler_name)
    except ServiceError as exc:
        valid = ", ".join(SCHEDULER_DISPLAY_NAMES.values())
        message = f"unknown sampler_name {sampler_name!r}; valid samplers: {valid}"
        raise InvalidRequest(message, param="sampler_name") from exc
    if schedule_key in AUTOMATIC:
        return (_karras_variant(canonical) or canonical) if canonical in AUTOMATIC_IS_KARRAS else canonical
    if schedule_key in UNIFORM:
        if canonical.endswith("_karras"):
            raise InvalidRequest(
                f"sampler {sampler_name!r} is a Karras sampler and scheduler {schedule!r} asks for the plain "
                f"schedule; send sampler {SCHEDULER_DISPLAY_NAMES[canonical.removesuffix('_karras')]!r} with it",
                param="scheduler",
            )
        return canonical
    if schedule_key == KARRAS:
        variant = _karras_variant(canonical)
        if variant is not None:
            return variant
        with_karras = ", ".join(
            name for key, name in SCHEDULER_DISPLAY_NAMES.items() if f"{key}_karras" in SCHEDULER_DISPLAY_NAMES
        )
        raise InvalidRequest(
            f"sampler {sampler_name!r} has no Karras schedule here; samplers with one: {with_karras or 'none'}",
            param="scheduler",
        )
    raise InvalidRequest(
        f"unknown scheduler {schedule!r}; valid schedulers: automatic, uniform, karras", param="scheduler"
    )


def sampler_list() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers``: A1111 display names, with Sfumato's names among the aliases."""
    entries = []
    for canonical, display in SCHEDULER_DISPLAY_NAMES.items():
        aliases = [canonical]
        karras = canonical.endswith("_karras") or canonical in AUTOMATIC_IS_KARRAS
        options = {"scheduler": "karras"} if karras else {}
        entries.append({"name": display, "aliases": aliases, "options": options})
    return entries
