"""The ControlNet part of a request: which ControlNets a model offers, and how a request's
``controlnet`` list is refused or normalised before anything is enqueued.

The catalogue is the model's registry entry (``ModelSpec.controlnets``), so the API and the
worker agree on names without talking to each other. Control images are uploads like the
img2img image: their size, format and declared dimensions are checked here (header only,
never decoded), and the worker decodes them only after that.

Normalisation keeps the request order (a unit pairs a name with an image, and several units
of the same ControlNet are allowed, e.g. two edge maps), rounds the numbers so that what runs
is exactly what the batch key says, and drops scale-0 units: a ControlNet at 0 adds nothing,
so such a request batches with plain ones.
"""

from __future__ import annotations

from core.config import Settings
from core.errors import InvalidRequest, UnknownChoice
from core.models import ControlNetSpec, ModelSpec
from core.schemas import ControlNetJob, ControlNetUnit
from core.uploads import inspect_upload

#: Conditioning scales a request may ask for. Beyond 2 the control residuals swamp the UNet's
#: own features and images fall apart; below 0 has no meaning for ControlNet.
MIN_SCALE = 0.0
MAX_SCALE = 2.0
#: Scales and start/end fractions are rounded to this many decimals (batch key = what runs).
DECIMALS = 3
#: What ``preprocess`` may say; the worker implements each (worker/pipelines/canny.py).
PREPROCESSORS = ("none", "canny")
#: Families whose pipelines the worker can build with a ControlNet.
SUPPORTED_FAMILIES = ("sd1", "sd2", "tiny")


def offered(spec: ModelSpec) -> dict[str, ControlNetSpec]:
    """Name -> ControlNet of ``spec``, in registry order."""
    return {c.name: c for c in spec.controlnets}


def _valid_names_text(spec: ModelSpec) -> str:
    names = list(offered(spec))
    return ", ".join(names) if names else f"none (model {spec.id!r} has no ControlNets)"


def _check_unit(index: int, unit: ControlNetUnit, spec: ModelSpec, settings: Settings) -> ControlNetJob:
    field = f"controlnet[{index}]"
    known = offered(spec).get(unit.name)
    if known is None:
        raise UnknownChoice(
            f"unknown ControlNet {unit.name!r}; valid ControlNets: {_valid_names_text(spec)}", param=f"{field}.name"
        )
    if not MIN_SCALE <= unit.scale <= MAX_SCALE:
        raise InvalidRequest(
            f"{field}.scale is {unit.scale}; allowed range is {MIN_SCALE}..{MAX_SCALE}", param=f"{field}.scale"
        )
    for name in ("start", "end"):
        value = getattr(unit, name)
        if not 0.0 <= value <= 1.0:
            raise InvalidRequest(f"{field}.{name} is {value}; allowed range is 0..1", param=f"{field}.{name}")
    start, end = round(unit.start, DECIMALS), round(unit.end, DECIMALS)
    if start >= end:
        raise InvalidRequest(
            f"{field}.start ({unit.start}) must be below {field}.end ({unit.end}): the ControlNet acts between them",
            param=f"{field}.start",
        )
    preprocess = unit.preprocess or known.preprocess
    if preprocess not in PREPROCESSORS:  # a registry default the worker cannot run
        raise InvalidRequest(
            f"{field}.preprocess is {preprocess!r}; valid: {', '.join(PREPROCESSORS)}", param=f"{field}.preprocess"
        )
    inspect_upload(
        unit.image, field=f"{field}.image", max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels
    )
    return ControlNetJob(
        name=unit.name,
        image_b64=unit.image,
        scale=round(unit.scale, DECIMALS),
        start=start,
        end=end,
        preprocess=preprocess,  # type: ignore[arg-type]  # checked against PREPROCESSORS above
    )


def normalize_controlnets(
    requested: list[ControlNetUnit], spec: ModelSpec, settings: Settings
) -> tuple[ControlNetJob, ...]:
    """Check the requested ControlNets against ``spec`` and Settings; the units that run.

    Raises :class:`InvalidRequest` (``UnknownChoice`` for a name) whose ``param`` is the
    field, e.g. ``controlnet[1].image``.
    """
    if not requested:
        return ()
    if settings.max_controlnets == 0:
        raise InvalidRequest(
            "ControlNet is turned off on this deployment (SFUMATO_MAX_CONTROLNETS=0)", param="controlnet"
        )
    if len(requested) > settings.max_controlnets:
        raise InvalidRequest(
            f"number of controlnet entries is {len(requested)}; the maximum is {settings.max_controlnets}",
            param="controlnet",
        )
    if spec.family not in SUPPORTED_FAMILIES:
        raise InvalidRequest(
            f"ControlNet is not supported for {spec.family} models (model {spec.id!r}); "
            f"supported families: {', '.join(SUPPORTED_FAMILIES)}",
            param="controlnet",
        )
    units = [_check_unit(i, unit, spec, settings) for i, unit in enumerate(requested)]
    return tuple(unit for unit in units if unit.scale != 0)
