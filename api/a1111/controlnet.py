"""``alwayson_scripts`` of an A1111 request: the ControlNet extension's units -> ours.

A1111 extensions take their arguments in ``alwayson_scripts[<name>].args``. The ControlNet
extension's units map onto :class:`~core.schemas.ControlNetUnit`: ``model`` (its `` [hash]``
suffix dropped) is the name, ``module`` the preprocessing ("none" or "canny"), ``weight`` the
scale, ``guidance_start``/``guidance_end`` the range; disabled units are dropped. Its other
knobs (resize mode, resolution, thresholds, pixel perfect, low VRAM) are accepted and ignored
(see docs/api/a1111.md); a control mode other than "Balanced" or a unit mask is a 422.

Any other script is accepted only while it is off (no args, or a first arg of ``false``,
which is what clients send for an installed-but-unused extension); otherwise a 422 names it.
"""

from __future__ import annotations

import re
from typing import Any

from core.errors import InvalidRequest
from core.schemas import ControlNetUnit

CONTROLNET_SCRIPT = "controlnet"
_MODULES = {"none": "none", "canny": "canny", "": None}
_BALANCED = (None, 0, "Balanced", "balanced")
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]*\]\s*$")


def _is_off(args: Any) -> bool:
    if not args:
        return True
    return isinstance(args, list) and args[0] is False


def _unit(index: int, raw: Any) -> ControlNetUnit | None:
    where = f"alwayson_scripts.controlnet.args[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where} must be a ControlNet unit (an object)", param=where)
    if raw.get("enabled", True) is False:
        return None
    image = raw.get("image") or raw.get("input_image")
    if isinstance(image, dict):  # {"image": ..., "mask": ...} in some extension versions
        if image.get("mask"):
            raise InvalidRequest(f"{where}.image.mask: ControlNet unit masks are not supported", param=f"{where}.image")
        image = image.get("image")
    if not isinstance(image, str) or not image:
        raise InvalidRequest(f"{where}.image: a ControlNet unit needs a control image (base64)", param=f"{where}.image")
    if raw.get("mask") or raw.get("mask_image"):
        raise InvalidRequest(f"{where}.mask: ControlNet unit masks are not supported", param=f"{where}.mask")
    if raw.get("control_mode") not in _BALANCED:
        raise InvalidRequest(
            f"{where}.control_mode is {raw.get('control_mode')!r}; only 'Balanced' is supported",
            param=f"{where}.control_mode",
        )
    module = str(raw.get("module") or "none").strip().lower()
    if module not in _MODULES:
        raise InvalidRequest(
            f"{where}.module is {raw.get('module')!r}; supported preprocessors: none, canny", param=f"{where}.module"
        )
    model = _HASH_SUFFIX.sub("", str(raw.get("model") or "")).strip()
    if not model or model == "None":
        raise InvalidRequest(f"{where}.model: name a ControlNet (GET /v1/models lists them)", param=f"{where}.model")
    fields: dict[str, Any] = {"name": model, "image": image, "preprocess": _MODULES[module]}
    for ours, theirs in (("scale", "weight"), ("start", "guidance_start"), ("end", "guidance_end")):
        if raw.get(theirs) is not None:
            fields[ours] = raw[theirs]
    try:
        return ControlNetUnit.model_validate(fields)
    except ValueError as exc:
        raise InvalidRequest(f"{where}: {exc}", param=where) from None


def controlnet_units(scripts: dict[str, Any]) -> list[ControlNetUnit]:
    """Our ControlNet units from ``alwayson_scripts``; a 422 for any other script that is on."""
    units: list[ControlNetUnit] = []
    for name, entry in scripts.items():
        args = entry.get("args") if isinstance(entry, dict) else entry
        if name.strip().lower() == CONTROLNET_SCRIPT:
            for index, raw in enumerate(args or []):
                unit = _unit(index, raw)
                if unit is not None:
                    units.append(unit)
        elif not _is_off(args):
            raise InvalidRequest(
                f"alwayson_scripts.{name}: the {name!r} extension is not supported (only ControlNet is); "
                "leave it out or send it switched off",
                param=f"alwayson_scripts.{name}",
            )
    return units
