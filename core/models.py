"""What a model is to the service: its public name, family, defaults and size limits.

The catalogue is derived from Settings so the API (which validates) and the worker (which
serves) agree without talking to each other. A registry file with several models replaces
:func:`served_models` later; callers only see :class:`ModelSpec`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from core.config import Settings
from core.errors import UnknownChoice


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
    from the model registry; none by default.
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

    def public(self) -> dict[str, Any]:
        """The shape ``GET /v1/models`` shows (no local paths: names and tokens only)."""
        data = asdict(self)
        data.pop("source")
        data["modes"] = list(self.modes)
        data["embeddings"] = [e.token for e in self.embeddings]
        data["controlnets"] = [{"name": c.name, "preprocess": c.preprocess} for c in self.controlnets]
        data["refiner"] = self.refiner is not None
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
    return ModelSpec(
        id=settings.resolved_model_id,
        source=settings.model,
        family="sd1",
        default_width=512,
        default_height=512,
        max_size=settings.max_size,
        default_steps=30,
        default_scheduler="dpmpp_2m_karras",
        default_guidance=7.0,
    )


def served_models(settings: Settings) -> dict[str, ModelSpec]:
    """Model id -> spec for every model this deployment serves."""
    spec = _spec_for(settings)
    return {spec.id: spec}


def resolve_model(settings: Settings, name: str | None) -> ModelSpec:
    """The spec for ``name`` (None: the default model); :class:`UnknownChoice` lists valid ids."""
    models = served_models(settings)
    if name is None:
        return next(iter(models.values()))
    if name in models:
        return models[name]
    raise UnknownChoice(f"unknown model {name!r}; valid models: {', '.join(models)}", param="model")


def queue_name(settings: Settings, model_id: str) -> str:
    """One RQ queue per model, so workers serve only what they have loaded."""
    return f"{settings.queue_prefix}:{model_id}"
