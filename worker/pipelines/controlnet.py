"""ControlNet on the resident model: ControlNet models loaded on first use and kept in a small
LRU, pipelines built per batch around the engine's resident UNet, VAE and text encoder.

What a caller may rely on:

* Never a second copy of the base model: a ControlNet pipeline is constructed from the
  engine's component dict (the same module objects) plus the ControlNet model(s); only the
  ControlNet weights are loaded, once per (name, source), and kept until evicted.
* The cache is bounded by count (``SFUMATO_CONTROLNET_CACHE_SIZE``); the ControlNets one batch
  needs are always kept together, even when they alone exceed it. Evicting drops the last
  reference (and on CUDA empties the allocator cache), so memory does not grow with the
  number of distinct ControlNets served.
* Weights load with safetensors only unless the operator allows pickle
  (``SFUMATO_ALLOW_PICKLE_WEIGHTS``), as for the base model.
* Control images are per job (each job brings its own), decoded and preprocessed when the job
  is prepared, so a broken control image fails only its own job; in the pipeline call they
  are stacked in job order and repeated for each of the job's ``n`` images, so an image sees
  exactly its own control image whether it ran alone or co-batched.

Not thread-safe: the engine calls it under its lock.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.controlnets.controlnet import ControlNetModel
from diffusers.pipelines.controlnet.pipeline_controlnet import StableDiffusionControlNetPipeline
from diffusers.pipelines.controlnet.pipeline_controlnet_img2img import StableDiffusionControlNetImg2ImgPipeline
from diffusers.pipelines.controlnet.pipeline_controlnet_inpaint import StableDiffusionControlNetInpaintPipeline
from PIL import Image

from core.batch_key import BatchKey
from core.errors import GenerationFailed
from core.models import ControlNetSpec
from core.schemas import ControlNetJob
from worker.pipelines import inputs
from worker.pipelines.canny import canny_image

log = logging.getLogger(__name__)

ControlNetPipeline = (
    StableDiffusionControlNetPipeline
    | StableDiffusionControlNetImg2ImgPipeline
    | StableDiffusionControlNetInpaintPipeline
)
_PIPELINES: dict[str, type[ControlNetPipeline]] = {
    "txt2img": StableDiffusionControlNetPipeline,
    "img2img": StableDiffusionControlNetImg2ImgPipeline,
    "inpaint": StableDiffusionControlNetInpaintPipeline,
}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def control_images(units: Sequence[ControlNetJob], width: int, height: int) -> tuple[Image.Image, ...]:
    """One RGB control map per unit, ``width`` x ``height``: decoded, resized, preprocessed.

    Resized before edge detection, so edges are one pixel wide at the size the model sees.
    Raises GenerationFailed naming ``controlnet[i].image`` for an image that cannot be decoded.
    """
    maps = []
    for index, unit in enumerate(units):
        image = inputs.control_image(unit.image_b64, f"controlnet[{index}].image", width, height)
        maps.append(canny_image(image) if unit.preprocess == "canny" else image)
    return tuple(maps)


class ControlNetModels:
    """The LRU of loaded ControlNet models; see the module docstring."""

    def __init__(
        self,
        max_count: int,
        device: torch.device,
        dtype: torch.dtype,
        *,
        attention: str = "sdpa",
        allow_pickle: bool = False,
        local_files_only: bool = False,
    ) -> None:
        self.max_count = max_count
        self.device = device
        self.dtype = dtype
        self.attention = attention
        self.allow_pickle = allow_pickle
        self.local_files_only = local_files_only
        self.loads = 0
        self.evictions = 0
        self._models: OrderedDict[tuple[str, str], ControlNetModel] = OrderedDict()

    @property
    def loaded(self) -> list[tuple[str, str]]:
        """(name, source) of each loaded model, least recently used first."""
        return list(self._models)

    def get(self, specs: Sequence[ControlNetSpec]) -> list[ControlNetModel]:
        """The loaded model of each spec (in order), loading what is missing, then evicting
        least recently used models beyond the limit (never one of ``specs``)."""
        keys = [(spec.name, spec.source) for spec in specs]
        models = []
        for key in keys:
            model = self._models.get(key)
            if model is None:
                model = self._load(*key)
                self._models[key] = model
            self._models.move_to_end(key)
            models.append(model)
        for key in list(self._models):
            if len(self._models) <= self.max_count:
                break
            if key not in keys:
                del self._models[key]
                self.evictions += 1
                log.info("evicted ControlNet %s (%s)", *key)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return models

    def _load(self, name: str, source: str) -> ControlNetModel:
        location = Path(source).expanduser()
        try:
            model = ControlNetModel.from_pretrained(
                str(location) if location.is_dir() else source,
                use_safetensors=None if self.allow_pickle else True,
                dtype=self.dtype,
                local_files_only=self.local_files_only,
            )
            model.to(self.device)
            model.eval()
            self._apply_attention(model)
        except Exception as exc:
            hint = "" if self.allow_pickle else " (safetensors weights only)"
            log.warning("could not load ControlNet %s from %s%s: %s", name, source, hint, _short(exc))
            raise GenerationFailed(
                f"could not load ControlNet {name!r}{hint}; the worker's log has the details", param="controlnet"
            ) from exc
        self.loads += 1
        log.info("loaded ControlNet %s from %s", name, source)
        return model

    def _apply_attention(self, model: ControlNetModel) -> None:
        """The engine's attention backend on the ControlNet's own attention layers."""
        if self.attention == "xformers":
            model.enable_xformers_memory_efficient_attention()
        elif self.attention == "sliced":
            model.set_attention_slice("auto")
        else:
            model.set_attn_processor(AttnProcessor2_0())


def specs_for(key: BatchKey, available: Sequence[ControlNetSpec]) -> list[ControlNetSpec]:
    """The spec of each of the batch's units, by name; GenerationFailed for a name this worker's
    model does not list (the API validated against another registry)."""
    by_name = {spec.name: spec for spec in available}
    missing = [name for name, *_ in key.controlnets if name not in by_name]
    if missing:
        raise GenerationFailed(f"ControlNet {missing[0]!r} is not available on this worker", param="controlnet")
    return [by_name[name] for name, *_ in key.controlnets]


def build_pipeline(mode: str, components: dict[str, Any], models: Sequence[ControlNetModel]) -> ControlNetPipeline:
    """A ControlNet pipeline for ``mode`` around ``components`` (the resident modules and a
    fresh scheduler): no weights are copied. Several models become a MultiControlNetModel,
    whose residuals are summed."""
    controlnet: Any = models[0] if len(models) == 1 else list(models)
    pipe = _PIPELINES[mode](**components, controlnet=controlnet, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_arguments(key: BatchKey, per_image_maps: Sequence[tuple[Image.Image, ...]]) -> dict[str, Any]:
    """The ControlNet keyword arguments of one pipeline call.

    ``per_image_maps`` holds, for each generated image in batch order, its job's control maps
    (one per unit). One ControlNet takes a flat list of images; several take one list per
    image, which diffusers transposes into one batch per ControlNet.
    """
    scales = [scale for _, scale, _, _, _ in key.controlnets]
    starts = [start for _, _, start, _, _ in key.controlnets]
    ends = [end for _, _, _, end, _ in key.controlnets]
    image_field = "image" if key.mode == "txt2img" else "control_image"
    if len(key.controlnets) == 1:
        return {
            image_field: [maps[0] for maps in per_image_maps],
            "controlnet_conditioning_scale": scales[0],
            "control_guidance_start": starts[0],
            "control_guidance_end": ends[0],
        }
    return {
        image_field: [list(maps) for maps in per_image_maps],
        "controlnet_conditioning_scale": scales,
        "control_guidance_start": starts,
        "control_guidance_end": ends,
    }
