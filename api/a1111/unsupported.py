"""Fields A1111 clients send at their default values, which Sfumato accepts only there.

A1111 clients (``webuiapi``, bots, plugins) send every field with its default, so those
defaults must parse. A value other than the default asks for something Sfumato does not do
(face restoration, tiling, hires fix, variation seeds, scripts...): that is a 422 naming the
field, never a request that is silently run without it. Each rule lists the values that mean
"not asked for" (A1111's own default and the one ``webuiapi`` sends, where they differ) and says
what the field asks for, for the error message and docs/api/a1111.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from core.errors import InvalidRequest


@dataclass(frozen=True)
class Rule:
    """A field that is accepted only while ``accepts(value)``; ``asks`` says what else would mean."""

    accepts: Callable[[Any], bool]
    allowed: str
    asks: str


def _one_of(*values: Any) -> Callable[[Any], bool]:
    return lambda value: value in values


def _empty(value: Any) -> bool:
    return not value


#: Fields of both endpoints. ``None`` is always "not asked for" (the field left to A1111's default).
COMMON: dict[str, Rule] = {
    "restore_faces": Rule(_one_of(None, False), "false", "face restoration (GFPGAN/CodeFormer)"),
    "tiling": Rule(_one_of(None, False), "false", "seamless tiling"),
    "styles": Rule(_empty, "[]", "saved prompt styles, which this server does not keep"),
    "subseed_strength": Rule(_one_of(0, 0.0), "0", "variation seeds"),
    "seed_resize_from_h": Rule(_one_of(-1, 0), "-1 or 0", "resizing the seed's noise from another size"),
    "seed_resize_from_w": Rule(_one_of(-1, 0), "-1 or 0", "resizing the seed's noise from another size"),
    "distilled_cfg_scale": Rule(_one_of(None), "null", "a distilled-guidance (Flux) model"),
    "eta": Rule(_one_of(None, 0, 1), "null, 0 or 1", "a sampler noise multiplier other than the samplers' defaults"),
    "s_min_uncond": Rule(_one_of(None, 0), "0", "skipping the negative prompt at low sigmas"),
    "s_churn": Rule(_one_of(None, 0), "0", "extra sampler noise (s_churn)"),
    "s_tmax": Rule(lambda v: v is None or v == 0 or v == float("inf"), "0", "a sampler noise range (s_tmax)"),
    "s_tmin": Rule(_one_of(None, 0), "0", "a sampler noise range (s_tmin)"),
    "s_noise": Rule(_one_of(None, 1), "1", "a sampler noise scale other than 1"),
    "refiner_checkpoint": Rule(lambda v: v in (None, "", "None"), "null", "A1111's refiner checkpoint switch"),
    "refiner_switch_at": Rule(_one_of(None, 0, 1), "null", "A1111's refiner checkpoint switch"),
    "disable_extra_networks": Rule(_one_of(False), "false", "leaving <lora:> tags in the prompt as plain text"),
    "script_name": Rule(lambda v: v in (None, "", "None"), "null", "an A1111 script, which this server does not run"),
    "script_args": Rule(_empty, "[]", "arguments of an A1111 script"),
    "infotext": Rule(lambda v: not v, "null", "reading the settings from an infotext"),
}

TXT2IMG: dict[str, Rule] = {
    **COMMON,
    "enable_hr": Rule(_one_of(False), "false", "the hires fix (a second, upscaled pass)"),
    "firstpass_image": Rule(_one_of(None, ""), "null", "a hires-fix first pass image"),
}

IMG2IMG: dict[str, Rule] = {
    **COMMON,
    "resize_mode": Rule(_one_of(0), "0", "a resize mode other than 'Just resize'"),
    "mask_blur": Rule(_one_of(None, 0, 4), "4 (the default) or 0", "blurring the mask"),
    "mask_blur_x": Rule(_one_of(0, 4), "4 (the default) or 0", "blurring the mask"),
    "mask_blur_y": Rule(_one_of(0, 4), "4 (the default) or 0", "blurring the mask"),
    "inpainting_fill": Rule(_one_of(0, 1), "0 or 1", "filling the masked area with noise or colour first"),
    "inpainting_mask_invert": Rule(_one_of(0), "0", "an inverted mask (repainting the black area)"),
    "initial_noise_multiplier": Rule(_one_of(None, 1), "1", "scaling the initial noise"),
    "latent_mask": Rule(lambda v: not v, "null", "a separate latent mask"),
    "include_init_images": Rule(_one_of(False), "false", "echoing the init images in the response"),
}


def refuse_unsupported(body: BaseModel, rules: dict[str, Rule]) -> None:
    """Raise a 422 naming the first field whose value asks for something Sfumato does not do."""
    for field, rule in rules.items():
        value = getattr(body, field)
        if not rule.accepts(value):
            raise InvalidRequest(
                f"{field} is {value!r}: it asks for {rule.asks}, which Sfumato does not support; "
                f"send {rule.allowed} or leave it out (see docs/api/a1111.md)",
                param=field,
            )
