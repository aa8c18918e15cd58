"""The model registry file (``SFUMATO_MODELS_FILE``): every model a deployment serves.

A TOML file read with the standard library and validated with pydantic when it is first used,
so a typo stops the API or the worker at start-up with a message naming the model and the
field, instead of failing requests later. The API and the workers read the same file (one
ConfigMap or volume), so they agree on ids, defaults and limits without talking to each other.

Shape (every key but ``id``, ``source`` and ``family`` is optional)::

    [[models]]
    id = "dreamshaper"                 # the name clients send as "model"
    source = "./models/dreamshaper"    # "tiny", "tiny-sdxl", "shapes", a diffusers folder, or a hub id
    family = "sd1"                     # sd1 | sd2 | sdxl | tiny
    default_width = 512
    default_height = 512
    max_size = 768                     # largest width/height (never above SFUMATO_MAX_SIZE)
    sizes = [[512, 512], [512, 768]]   # or: only these sizes are allowed
    default_steps = 25
    default_scheduler = "dpmpp_2m_karras"
    default_guidance = 7.0
    timestep_spacing = "trailing"      # leading | linspace | trailing; default: the model's own
                                       # scheduler config (few-step models: docs/models/registry.md)
    lora_dir = "./loras/sd1"           # default: SFUMATO_LORA_DIR
    embeddings_dir = "./embeddings/sd1"  # every .safetensors here is a token (its file name), as in A1111
                                       # default: <SFUMATO_DATA_DIR>/embeddings/<id>
    refiner = "./models/sdxl-refiner"  # SDXL only
    config = "./configs/my-arch"       # a single-file source's diffusers config folder (default: by family)
    refiner_config = "./configs/my-refiner"  # the same for a single-file refiner (default: SDXL's refiner)
    vae = "./vae/ft-mse.safetensors"   # replaces the model's VAE: a single file or a diffusers folder
    prediction_type = "v_prediction"   # epsilon | v_prediction: overrides what the file suggests
    [[models.embeddings]]
    token = "<ink-style>"
    path = "./embeddings/ink.safetensors"
    [[models.controlnets]]
    name = "canny"
    source = "./controlnets/canny"
    preprocess = "canny"               # none | canny

Paths: a value starting with ``/``, ``./``, ``../`` or ``~`` is a local path, and relative ones
resolve against the file's folder. Any other ``source``/``refiner`` is a Hugging Face hub id
(``owner/name``). ``source`` and ``refiner`` may also be a single ``.safetensors`` checkpoint in
the original (CompVis / A1111) layout; its family is detected from its keys (core/checkpoints.py)
and must agree with ``family``.
"""

from __future__ import annotations

import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.checkpoints import is_single_file
from core.errors import RegistryInvalid, UnknownChoice
from core.scheduler_names import TimestepSpacing, canonical_scheduler, scheduler_max_steps

#: Model ids and ControlNet names: what clients send; no spaces, no path separators.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
#: An embedding token is one word of the prompt (no whitespace), e.g. ``<ink-style>``.
TOKEN_PATTERN = r"^\S{1,64}$"

_PATH_PREFIXES = ("/", "./", "../", "~")
_SIZE = Annotated[int, Field(ge=8, le=16384)]


def is_local_path(value: str) -> bool:
    """Whether a registry ``source``/``refiner`` names a local folder or file rather than a hub id
    (a single-file checkpoint, ``*.safetensors``, is always local)."""
    return value.startswith(_PATH_PREFIXES) or value in (".", "..") or value.lower().endswith(".safetensors")


def resolve_path(value: str, base: Path) -> str:
    """An absolute path for ``value``: relative ones are taken from ``base`` (the file's folder)."""
    return str((base / Path(value).expanduser()).resolve())


def resolve_source(value: str, base: Path) -> str:
    """``tiny`` and hub ids as they are; local paths made absolute against ``base``."""
    if value == "tiny" or not is_local_path(value):
        return value
    return resolve_path(value, base)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddingEntry(_Strict):
    """A textual-inversion embedding: ``path`` is a ``.safetensors`` file (pickle is refused)."""

    token: str = Field(pattern=TOKEN_PATTERN)
    path: str = Field(min_length=1)

    @field_validator("path")
    @classmethod
    def _safetensors_only(cls, value: str) -> str:
        if not value.endswith(".safetensors"):
            raise ValueError(f"{value!r} is not a .safetensors file (pickle formats run code when loaded)")
        return value


class ControlNetEntry(_Strict):
    name: str = Field(pattern=ID_PATTERN)
    source: str = Field(min_length=1)
    preprocess: Literal["none", "canny"] = "none"


class ModelEntry(_Strict):
    """One ``[[models]]`` table. Unset defaults come from the family (see core/models.py)."""

    id: str = Field(pattern=ID_PATTERN)
    source: str = Field(min_length=1)
    family: Literal["sd1", "sd2", "sdxl", "tiny"]
    default_width: _SIZE | None = None
    default_height: _SIZE | None = None
    max_size: _SIZE | None = None
    sizes: list[tuple[_SIZE, _SIZE]] | None = Field(default=None, min_length=1)
    default_steps: int | None = Field(default=None, ge=1, le=1000)
    default_scheduler: str | None = None
    default_guidance: float | None = Field(default=None, ge=0, le=100)
    timestep_spacing: TimestepSpacing | None = None
    lora_dir: str | None = Field(default=None, min_length=1)
    embeddings_dir: str | None = Field(default=None, min_length=1)
    refiner: str | None = Field(default=None, min_length=1)
    config: str | None = Field(default=None, min_length=1)
    refiner_config: str | None = Field(default=None, min_length=1)
    vae: str | None = Field(default=None, min_length=1)
    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    embeddings: list[EmbeddingEntry] = Field(default_factory=list)
    controlnets: list[ControlNetEntry] = Field(default_factory=list)

    @field_validator("default_scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return canonical_scheduler(value)
        except UnknownChoice as exc:
            raise ValueError(exc.message) from None

    @field_validator("default_width", "default_height", "max_size")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"{value} is not a multiple of 8")
        return value

    @field_validator("sizes")
    @classmethod
    def _sizes_multiple_of_8(cls, value: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        for width, height in value or ():
            if width % 8 or height % 8:
                raise ValueError(f"{width}x{height} is not a multiple of 8 in both sides")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        if self.source == "tiny" and self.family != "tiny":
            raise ValueError(f"source 'tiny' is the built-in tiny model: its family is 'tiny', not {self.family!r}")
        if self.source == "shapes" and self.family != "sd1":
            raise ValueError(f"source 'shapes' is the built-in shapes model: its family is 'sd1', not {self.family!r}")
        if self.source == "tiny-sdxl" and self.family != "sdxl":
            raise ValueError(f"source 'tiny-sdxl' is the built-in tiny SDXL: its family is 'sdxl', not {self.family!r}")
        limit = None if self.default_scheduler is None else scheduler_max_steps(self.default_scheduler)
        if limit is not None and self.default_steps is not None and self.default_steps > limit:
            raise ValueError(
                f"default_steps: {self.default_steps} is more than scheduler {self.default_scheduler!r} "
                f"can run (at most {limit})"
            )
        if self.refiner is not None and self.family != "sdxl":
            raise ValueError(f"refiner: only SDXL models take a refiner (family is {self.family!r})")
        if self.config is not None and not is_local_path(self.config):
            raise ValueError(f"config: {self.config!r} must be a local folder path (starting with /, ./, ../ or ~)")
        if self.refiner_config is not None and (self.refiner is None or not is_single_file(self.refiner)):
            raise ValueError("refiner_config: only a single-file (.safetensors) refiner takes a config folder")
        if self.refiner_config is not None and not is_local_path(self.refiner_config):
            raise ValueError(
                f"refiner_config: {self.refiner_config!r} must be a local folder path (starting with /, ./, ../ or ~)"
            )
        if self.vae is not None and not is_local_path(self.vae):
            raise ValueError(f"vae: {self.vae!r} must be a local path (a .safetensors file or a diffusers folder)")
        for name, value in (("source", self.source), ("refiner", self.refiner), ("vae", self.vae)):
            if value is not None and value.lower().endswith((".ckpt", ".pt", ".pth", ".bin")):
                raise ValueError(f"{name}: {value!r} is a pickle checkpoint; only .safetensors files are loaded")
        _unique([e.token for e in self.embeddings], "embeddings", "token")
        _unique([c.name for c in self.controlnets], "controlnets", "name")
        return self


class RegistryFile(_Strict):
    models: list[ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> RegistryFile:
        _unique([m.id for m in self.models], "models", "id")
        return self


def _unique(values: list[str], field: str, key: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{field}: {key} {value!r} is given twice")
        seen.add(value)


def _describe(error: Any, raw: dict[str, Any]) -> str:
    """One pydantic error as ``model 'x' (models[1]): field: message``."""
    loc = list(error.get("loc", ()))
    where = ""
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        index = loc[1]
        entries = raw.get("models")
        model_id = None
        if isinstance(entries, list) and index < len(entries) and isinstance(entries[index], dict):
            model_id = entries[index].get("id")
        where = f"model {model_id!r} (models[{index}])" if model_id else f"models[{index}]"
        loc = loc[2:]
    field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    message = re.sub(r"^Value error, ", "", str(error.get("msg", "invalid")))
    return ": ".join(part for part in (where, field, message) if part)


@lru_cache(maxsize=8)
def _parse(path: str, mtime_ns: int, size: int) -> RegistryFile:
    """Parse and validate once per version of the file (keyed by mtime and size)."""
    del mtime_ns, size  # only part of the cache key
    where = registry_label(Path(path))
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RegistryInvalid(f"{where}: not valid TOML: {exc}") from None
    try:
        return RegistryFile.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e, raw) for e in exc.errors()]
        raise RegistryInvalid(f"{where}: " + "; ".join(problems)) from None


def registry_label(path: Path) -> str:
    """How messages name the file: its name only, since a message may reach a client (a
    registry broken after start-up fails requests with 503) and must not show server paths."""
    return f"SFUMATO_MODELS_FILE ({path.name})"


def read_registry(path: Path) -> RegistryFile:
    """The validated registry at ``path``; :class:`RegistryInvalid` names the model and field.

    Re-read when the file changes (its mtime or size), so the API follows an edited ConfigMap;
    a worker keeps serving the spec it loaded.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise RegistryInvalid(f"{registry_label(path)} cannot be read: {exc.strerror or exc}") from None
    return _parse(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
