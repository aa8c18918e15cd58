"""A1111 options (``GET/POST /sdapi/v1/options``), kept per API key in Redis.

A1111 keeps one global options object: one client switching ``sd_model_checkpoint`` switches
everyone's model. Here each API key (the anonymous caller when keys are off) has its own small
Redis hash, so a tenant's settings never reach another tenant's requests and the API process
holds no state. A request's ``override_settings`` apply to that request only.

Settable: ``sd_model_checkpoint`` (a served model; a title's `` [hash]`` suffix and
``.safetensors`` are dropped), ``CLIP_stop_at_last_layers`` (A1111's clip skip, 1 = none) and
``live_previews_enable`` (``GET /progress`` shows ``current_image``). The rest of what
``GET /options`` shows is read-only: posting it back unchanged (a client's read-modify-write)
is accepted, changing it is a 422 naming the key, and so is an unknown key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import redis

from core.apikeys import Principal
from core.config import Settings
from core.errors import InvalidRequest
from core.jobs import redis_errors
from core.models import resolve_model, served_models

MODEL = "sd_model_checkpoint"
CLIP_SKIP = "CLIP_stop_at_last_layers"
PREVIEWS = "live_previews_enable"
SETTABLE = (MODEL, CLIP_SKIP, PREVIEWS)
_TITLE_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]*\]\s*$")


def options_key(settings: Settings, principal: Principal) -> str:
    return f"{settings.queue_prefix}:a1111:options:{principal.tenant}:{principal.key_id}"


def model_id_of(settings: Settings, title: Any, field: str) -> str:
    """The served model an A1111 checkpoint title names (``"tiny"``, ``"tiny.safetensors [ab12]"``)."""
    if not isinstance(title, str):
        raise InvalidRequest(f"{field} must be a model title (a string), not {title!r}", param=field)
    name = _TITLE_SUFFIX.sub("", title).strip()
    name = name.removesuffix(".safetensors").removesuffix(".ckpt")
    models = served_models(settings)
    if name not in models:
        raise InvalidRequest(f"unknown model {title!r} in {field}; valid models: {', '.join(models)}", param=field)
    return name


def clip_layers_of(settings: Settings, value: Any, field: str) -> int:
    """A1111's ``CLIP_stop_at_last_layers`` (1 = use the last layer), checked against the limit."""
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise InvalidRequest(f"{field} must be a whole number, not {value!r}", param=field)
    highest = settings.max_clip_skip + 1
    if not 1 <= value <= highest:
        raise InvalidRequest(f"{field} is {value}; allowed range is 1..{highest}", param=field)
    return int(value)


def _previews_of(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field} must be true or false, not {value!r}", param=field)
    return value


@dataclass(frozen=True)
class CallerOptions:
    """The options that shape a caller's requests."""

    model: str
    clip_layers: int
    previews: bool


#: What ``GET /options`` shows besides the settable keys: facts about this server, not choices.
READ_ONLY: dict[str, Any] = {
    "sd_checkpoint_hash": None,
    "samples_format": "png",
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "show_progress_every_n_steps": 1,
    "sd_vae": "Automatic",
    "img2img_fix_steps": False,
    "enable_emphasis": True,
}


class OptionsStore:
    """Read and change one caller's options (blocking: Redis)."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def _stored(self, principal: Principal) -> dict[str, Any]:
        with redis_errors():
            raw: Any = self.connection.hgetall(options_key(self.settings, principal))
        stored = {}
        for key, value in (raw or {}).items():
            name = key.decode() if isinstance(key, bytes) else key
            stored[name] = json.loads(value)
        return stored

    def caller(self, principal: Principal) -> CallerOptions:
        stored = self._stored(principal)
        models = served_models(self.settings)
        model = stored.get(MODEL)
        if model not in models:  # never set, or no longer served: the default model
            model = resolve_model(self.settings, None).id
        return CallerOptions(
            model=model, clip_layers=int(stored.get(CLIP_SKIP, 1)), previews=bool(stored.get(PREVIEWS, True))
        )

    def view(self, principal: Principal) -> dict[str, Any]:
        """``GET /options``: the caller's settable options and the read-only facts."""
        options = self.caller(principal)
        return {
            MODEL: options.model,
            CLIP_SKIP: options.clip_layers,
            PREVIEWS: options.previews,
            **READ_ONLY,
        }

    def update(self, principal: Principal, changes: dict[str, Any]) -> None:
        """``POST /options``: check every key first, then store them all (nothing half-applied)."""
        current = self.view(principal)
        checked: dict[str, Any] = {}
        for key, value in changes.items():
            if key == MODEL:
                checked[key] = model_id_of(self.settings, value, key)
            elif key == CLIP_SKIP:
                checked[key] = clip_layers_of(self.settings, value, key)
            elif key == PREVIEWS:
                checked[key] = _previews_of(value, key)
            elif key in current:
                if current[key] != value:
                    raise InvalidRequest(
                        f"option {key} is read-only here (it is {current[key]!r}); settable: {', '.join(SETTABLE)}",
                        param=key,
                    )
            else:
                raise InvalidRequest(f"unknown option {key!r}; settable: {', '.join(SETTABLE)}", param=key)
        if checked:
            with redis_errors():
                self.connection.hset(
                    options_key(self.settings, principal), mapping={k: json.dumps(v) for k, v in checked.items()}
                )
