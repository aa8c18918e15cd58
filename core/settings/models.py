"""Model settings: what is served and how a worker runs it (device, precision, attention,
LoRA and ControlNet caches)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from core.settings.base import SettingsGroup, shown_default


class ModelSettings(SettingsGroup):
    """What this deployment serves and how: one model (``SFUMATO_MODEL``) or a registry of
    them (``SFUMATO_MODELS_FILE``), the model a worker loads, where it runs (device, dtype,
    attention), and the LoRAs and ControlNets a request may add.

    Read by the API (the model catalogue, defaults and limits it validates against, the LoRA
    names it lists) and by the worker (what it loads, where, and how much it keeps resident).
    """

    section: ClassVar[str] = "Models"

    model: str = Field(
        default="tiny",
        description="`tiny` (random weights, for tests), `shapes` (built-in model that draws simple shapes; "
        "`make run`'s default), `tiny-sdxl` (built-in tiny SDXL), a local diffusers folder or a hub id. "
        "Ignored when `SFUMATO_MODELS_FILE` is set.",
    )
    model_id: str | None = Field(
        default=None,
        description="Public model name clients pass as `model`. Unset: `tiny`, or the folder / repo name of "
        "`SFUMATO_MODEL` in lower case.",
        json_schema_extra=shown_default("derived from `SFUMATO_MODEL`"),
    )
    refiner: str | None = Field(
        default=None,
        description="SDXL refiner of `SFUMATO_MODEL` (an SDXL model) when no registry is used: "
        "`tiny-sdxl-refiner`, a local diffusers folder or a hub id. Only its UNet is loaded (text_encoder_2 "
        "and VAE are the base's). Unset: no refiner.",
    )
    models_file: Path | None = Field(
        default=None,
        description="TOML model registry (any number of models, each with its own defaults, LoRAs, embeddings, "
        "ControlNets, refiner); replaces `SFUMATO_MODEL`/`SFUMATO_MODEL_ID` when set.",
    )
    worker_model: str | None = Field(
        default=None,
        description="Registry model id this worker loads and serves (one model per worker).",
        json_schema_extra=shown_default("the registry's first model"),
    )
    queue_without_workers: bool | None = Field(
        default=None,
        description="Queue requests for a model no live worker serves (scale from zero; the job shows "
        '`waiting_for: "no_worker"`) instead of answering `503 no_worker`.',
        json_schema_extra=shown_default("`true` without `SFUMATO_MODELS_FILE`, `false` with it"),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the worker runs the model; `auto`: CUDA when available, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights' precision on the worker; `auto`: float16 on CUDA, float32 on CPU "
        "(bfloat16 is the CPU choice for large models).",
    )
    attention: Literal["auto", "xformers", "sdpa", "sliced"] = Field(
        default="auto",
        description="Attention kernels; `auto`: xformers on CUDA when importable, else PyTorch SDPA; "
        "`sliced`: least memory, slowest.",
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads on CPU (unset: torch's default, all cores)."
    )

    lora_dir: Path | None = Field(
        default=None,
        description="Folder of `<name>.safetensors` LoRAs, read by the API (names) and the worker (weights); "
        "a registry model may name its own.",
        json_schema_extra=shown_default("`data_dir/loras`"),
    )
    max_loras: int = Field(default=4, ge=0, le=16, description="Most LoRAs one request may combine; 0 = LoRAs off.")
    lora_min_scale: float = Field(
        default=-2.0, ge=-10, le=0, description="Smallest LoRA `scale` a request may ask for."
    )
    lora_max_scale: float = Field(default=2.0, ge=0, le=10, description="Largest LoRA `scale` a request may ask for.")
    lora_cache_size: int = Field(default=8, ge=1, le=256, description="LoRA adapters a worker keeps loaded (LRU).")
    lora_cache_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=1024,
        description="Bytes of loaded LoRA weights a worker keeps (LRU; estimated at 4 bytes per parameter).",
    )

    max_controlnets: int = Field(
        default=2,
        ge=0,
        le=8,
        description="Most ControlNets one request may combine; 0 = ControlNet off. Also raises the default body "
        "limit (`SFUMATO_MAX_BODY_BYTES` unset) to room for an image, a mask and this many control images.",
    )
    controlnet_cache_size: int = Field(
        default=2, ge=1, le=64, description="ControlNet models a worker keeps loaded (LRU by count)."
    )

    @property
    def resolved_queue_without_workers(self) -> bool:
        """Whether a request for a model with no live worker is queued (True) or refused (503).

        Unset: a single-model deployment (no registry) queues, as it always did, so a worker
        that starts later picks the jobs up; a registry deployment refuses, so a request for a
        model nobody serves is never silently stuck."""
        if self.queue_without_workers is not None:
            return self.queue_without_workers
        return self.models_file is None

    @property
    def resolved_model_id(self) -> str:
        """The name clients use in ``model``: explicit, 'tiny', or the folder / repo name."""
        if self.model_id:
            return self.model_id
        if self.model == "tiny":
            return "tiny"
        return Path(self.model.rstrip("/")).name.lower()
