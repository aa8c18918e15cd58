"""What a model is to the service: its public name, family, defaults and size limits.

The catalogue is derived from Settings so the API (which validates) and the worker (which
serves) agree without talking to each other: either the model registry file
(``SFUMATO_MODELS_FILE``, see core/registry.py) with any number of models, or, without it, the
one model of ``SFUMATO_MODEL``. Callers only see :class:`ModelSpec`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from core.checkpoints import ALL_MODES, detect, is_single_file, read_header, served_family, source_modes
from core.config import Settings
from core.errors import ModelUnavailable, UnknownChoice
from core.priority import DEFAULT_PRIORITY, PriorityClass
from core.priority import queue_name as priority_queue_name
from core.prompt_guide import SHAPES_PROMPT_GUIDE, PromptGuide
from core.registry import ModelEntry, read_registry, registry_label, resolve_path, resolve_source


@dataclass(frozen=True)
class EmbeddingSpec:
    """A textual-inversion embedding (safetensors) usable in prompts by its ``token``."""

    token: str
    path: str


@dataclass(frozen=True)
class ControlNetSpec:
    """A ControlNet a request may name: a diffusers ControlNetModel folder or hub id.

    ``preprocess`` is the default preprocessing of its control images ("none" or "canny").
    """

    name: str
    source: str
    preprocess: str = "none"


@dataclass(frozen=True)
class ModelSpec:
    """Defaults and limits of one served model. ``max_size`` never exceeds Settings.max_size.

    ``embeddings``, ``controlnets`` and ``refiner`` (an SDXL refiner's folder or hub id) come
    from the model registry; none by default. ``sizes``: when not empty, the only (width,
    height) pairs a request may ask for. ``lora_dir``: this model's LoRA folder (None: the
    global SFUMATO_LORA_DIR). Paths here are absolute and never shown to clients.
    ``prompt_guide``: the words a model with a small vocabulary knows (the built-in shapes
    model); None for models that take any prompt, and then absent from ``GET /v1/models``.
    """

    id: str
    source: str
    family: Literal["sd1", "sd2", "sdxl", "tiny"]
    default_width: int
    default_height: int
    max_size: int
    default_steps: int
    default_scheduler: str
    default_guidance: float
    modes: tuple[str, ...] = ("txt2img", "img2img", "inpaint")
    embeddings: tuple[EmbeddingSpec, ...] = ()
    controlnets: tuple[ControlNetSpec, ...] = ()
    refiner: str | None = None
    sizes: tuple[tuple[int, int], ...] = ()
    lora_dir: str | None = None
    #: The folder of A1111-style embeddings (each ``<token>.safetensors``); None: the default
    #: ``<data_dir>/embeddings/<id>`` (worker/pipelines/embeddings.py ``embeddings_folder``).
    embeddings_dir: str | None = None
    #: The model's own smallest side, when below SFUMATO_MIN_SIZE (the built-in shapes model
    #: draws at 32 px); None: SFUMATO_MIN_SIZE.
    min_size: int | None = None
    prompt_guide: PromptGuide | None = None
    #: Single-file checkpoints (core/checkpoints.py): a diffusers config folder replacing the one
    #: shipped for the detected family; a VAE (file or folder) replacing the model's; the
    #: prediction type when the file's own marker or the family default is wrong. Paths absolute.
    config: str | None = None
    vae: str | None = None
    prediction_type: str | None = None
    #: The diffusers config folder of a single-file ``refiner`` of an unusual architecture;
    #: None: the shipped SDXL refiner config.
    refiner_config: str | None = None
    #: diffusers' ``timestep_spacing`` for every scheduler built for this model (leading,
    #: linspace, trailing); None: whatever the model's own scheduler config says. Few-step
    #: models distilled on trailing timesteps (SDXL-Turbo, Lightning, Hyper-SD) need "trailing".
    timestep_spacing: str | None = None

    def public(self) -> dict[str, Any]:
        """The shape ``GET /v1/models`` shows (no local paths: names and tokens only)."""
        data = asdict(self)
        data.pop("source")
        data.pop("lora_dir")
        data.pop("embeddings_dir")  # a local path
        for local in ("config", "vae", "prediction_type", "refiner_config"):  # server-side loading details
            data.pop(local)
        data["sizes"] = [list(size) for size in self.sizes]
        data["modes"] = list(self.modes)
        data["embeddings"] = [e.token for e in self.embeddings]
        data["controlnets"] = [{"name": c.name, "preprocess": c.preprocess} for c in self.controlnets]
        data["refiner"] = self.refiner is not None
        data.pop("prompt_guide")
        if self.prompt_guide is not None:  # only models with a vocabulary: old clients see no change
            data["prompt_guide"] = self.prompt_guide.public()
        return data


def _spec_for(settings: Settings) -> ModelSpec:
    if settings.model == "tiny":
        return ModelSpec(
            id=settings.resolved_model_id,
            source="tiny",
            family="tiny",
            default_width=64,
            default_height=64,
            max_size=min(256, settings.max_size),
            default_steps=20,
            default_scheduler="ddim",
            default_guidance=7.5,
        )
    if settings.model == "shapes":
        limits = {**SHAPES_DEFAULTS, "max_size": min(SHAPES_DEFAULTS["max_size"], settings.max_size)}
        return ModelSpec(
            id=settings.resolved_model_id, source="shapes", family="sd1", prompt_guide=SHAPES_PROMPT_GUIDE, **limits
        )
    if settings.model == "tiny-sdxl" or is_sdxl_folder(settings.model) or _checkpoint_family(settings.model) == "sdxl":
        return _sdxl_spec_for(settings)
    return ModelSpec(
        id=settings.resolved_model_id,
        source=settings.model,
        family=_checkpoint_family(settings.model) or "sd1",
        default_width=512,
        default_height=512,
        max_size=settings.max_size,
        default_steps=30,
        default_scheduler="dpmpp_2m_karras",
        default_guidance=7.0,
        modes=source_modes(settings.model),
    )


#: The built-in shapes model (worker/builtin/shapes/model): trained on 32 px scenes, so 32 px by
#: default and at most 64 (beyond that it draws its 32 px world several times over).
SHAPES_DEFAULTS: dict[str, Any] = {
    "default_width": 32,
    "default_height": 32,
    "max_size": 64,
    "min_size": 32,
    "default_steps": 20,
    "default_scheduler": "ddim",
    "default_guidance": 3.0,  # measured best for this model (bench/results/shapes.json); 7 oversaturates
}


def _checkpoint_family(source: str) -> Literal["sd1", "sd2", "sdxl"] | None:
    """The family of a single-file ``SFUMATO_MODEL`` from its header; None for anything else or
    an unreadable file (the worker then stops at start-up naming what is wrong with it)."""
    if not is_single_file(source):
        return None
    try:
        return served_family(detect(read_header(Path(source).expanduser())))
    except ValueError:
        return None


def is_sdxl_folder(source: str) -> bool:
    """Whether ``source`` is a local diffusers folder of an SDXL pipeline (its model_index.json
    names a ``StableDiffusionXL*`` class). Hub ids are not looked up: name their family in
    the model registry."""
    index = Path(source).expanduser() / "model_index.json"
    try:
        class_name = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(class_name, str) and class_name.startswith("StableDiffusionXL")


def _sdxl_spec_for(settings: Settings) -> ModelSpec:
    """SFUMATO_MODEL is the built-in tiny SDXL or an SDXL folder; SFUMATO_REFINER its refiner."""
    tiny = settings.model == "tiny-sdxl"
    return ModelSpec(
        id=settings.resolved_model_id,
        source=settings.model,
        family="sdxl",
        default_width=64 if tiny else 1024,
        default_height=64 if tiny else 1024,
        max_size=min(256 if tiny else 2048, settings.max_size),
        default_steps=20 if tiny else 30,
        default_scheduler="ddim" if tiny else "dpmpp_2m_karras",
        default_guidance=5.0,
        refiner=settings.refiner,
        modes=ALL_MODES if tiny else source_modes(settings.model),
    )


#: Per family: default width/height, largest side, steps, scheduler, guidance.
_FAMILY_DEFAULTS: dict[str, tuple[int, int, int, str, float]] = {
    "tiny": (64, 256, 20, "ddim", 7.5),
    "sd1": (512, 1024, 30, "dpmpp_2m_karras", 7.0),
    "sd2": (768, 1024, 30, "dpmpp_2m_karras", 7.0),
    "sdxl": (1024, 2048, 30, "dpmpp_2m_karras", 5.0),
}


def _registry_spec(entry: ModelEntry, base: Path, settings: Settings, where: str) -> ModelSpec:
    """A registry entry with the family's defaults filled in and paths made absolute."""
    side, largest, steps, scheduler, guidance = _FAMILY_DEFAULTS[entry.family]
    if entry.source == "tiny-sdxl":  # the built-in tiny SDXL: tiny sizes, SDXL guidance
        side, largest, steps, scheduler = _FAMILY_DEFAULTS["tiny"][:4]
    if entry.source == "shapes":  # the built-in shapes model: its own small sizes
        side, largest, steps, scheduler, guidance = (
            SHAPES_DEFAULTS["default_width"], SHAPES_DEFAULTS["max_size"], SHAPES_DEFAULTS["default_steps"],
            SHAPES_DEFAULTS["default_scheduler"], SHAPES_DEFAULTS["default_guidance"],
        )  # fmt: skip
    sizes = tuple(entry.sizes or ())
    max_size = min(entry.max_size or largest, settings.max_size)
    if sizes:
        too_big = [f"{w}x{h}" for w, h in sizes if max(w, h) > max_size]
        if too_big:
            raise ModelUnavailable(
                f"{where}: model {entry.id!r}: sizes {', '.join(too_big)} exceed its max_size {max_size} "
                f"(capped by SFUMATO_MAX_SIZE={settings.max_size}); raise the limit or drop those sizes"
            )
        max_size = max(max(w, h) for w, h in sizes)
    first = sizes[0] if sizes else (side, side)
    width = entry.default_width or min(first[0], max_size)
    height = entry.default_height or min(first[1], max_size)
    if max(width, height) > max_size:
        raise ModelUnavailable(
            f"{where}: model {entry.id!r}: default size {width}x{height} is above its max_size {max_size} "
            f"(max_size is capped by SFUMATO_MAX_SIZE={settings.max_size})"
        )
    if sizes and (width, height) not in sizes:
        raise ModelUnavailable(f"{where}: model {entry.id!r}: default size {width}x{height} is not one of its sizes")
    source = resolve_source(entry.source, base)
    return ModelSpec(
        id=entry.id,
        source=source,
        # What its UNet can draw: only inpainting for a 9-channel one (core/checkpoints.py).
        modes=ALL_MODES if entry.source in ("tiny", "tiny-sdxl", "shapes") else source_modes(source),
        family=entry.family,
        default_width=width,
        default_height=height,
        max_size=max_size,
        default_steps=entry.default_steps or steps,
        default_scheduler=entry.default_scheduler or scheduler,
        default_guidance=guidance if entry.default_guidance is None else entry.default_guidance,
        embeddings=tuple(EmbeddingSpec(e.token, resolve_path(e.path, base)) for e in entry.embeddings),
        controlnets=tuple(
            ControlNetSpec(c.name, resolve_source(c.source, base), c.preprocess) for c in entry.controlnets
        ),
        refiner=None if entry.refiner is None else resolve_source(entry.refiner, base),
        config=None if entry.config is None else resolve_path(entry.config, base),
        refiner_config=None if entry.refiner_config is None else resolve_path(entry.refiner_config, base),
        vae=None if entry.vae is None else resolve_path(entry.vae, base),
        prediction_type=entry.prediction_type,
        timestep_spacing=entry.timestep_spacing,
        sizes=sizes,
        lora_dir=None if entry.lora_dir is None else resolve_path(entry.lora_dir, base),
        embeddings_dir=None if entry.embeddings_dir is None else resolve_path(entry.embeddings_dir, base),
        min_size=SHAPES_DEFAULTS["min_size"] if entry.source == "shapes" else None,
        prompt_guide=SHAPES_PROMPT_GUIDE if entry.source == "shapes" else None,
    )


def served_models(settings: Settings) -> dict[str, ModelSpec]:
    """Model id -> spec for every model this deployment serves, in registry order.

    Raises :class:`~core.errors.RegistryInvalid` (or ModelUnavailable for defaults that break
    the model's own limits) naming the model and the field when the registry is wrong.
    """
    path = settings.models_file
    if path is None:
        spec = _spec_for(settings)
        return {spec.id: spec}
    registry = read_registry(path)
    base = path.resolve().parent
    specs = [_registry_spec(entry, base, settings, registry_label(path)) for entry in registry.models]
    return {spec.id: spec for spec in specs}


def resolve_model(settings: Settings, name: str | None) -> ModelSpec:
    """The spec for ``name`` (None: the default model); :class:`UnknownChoice` lists valid ids."""
    models = served_models(settings)
    if name is None:
        return next(iter(models.values()))
    if name in models:
        return models[name]
    raise UnknownChoice(f"unknown model {name!r}; valid models: {', '.join(models)}", param="model")


def worker_model(settings: Settings) -> ModelSpec:
    """The one model this worker serves: ``SFUMATO_WORKER_MODEL``, else the first served model.

    Raises :class:`ModelUnavailable` listing the valid ids for an id the registry lacks.
    """
    models = served_models(settings)
    if settings.worker_model is None:
        return next(iter(models.values()))
    if settings.worker_model in models:
        return models[settings.worker_model]
    raise ModelUnavailable(
        f"SFUMATO_WORKER_MODEL is {settings.worker_model!r}, which is not a served model; "
        f"valid models: {', '.join(models)}"
    )


def queue_name(settings: Settings, model_id: str, priority: PriorityClass = DEFAULT_PRIORITY) -> str:
    """One RQ queue per model and priority class, so workers serve only what they have loaded.

    Without a class: the ``standard`` queue, the model's historical queue name (core/priority.py).
    """
    return priority_queue_name(settings, model_id, priority)
