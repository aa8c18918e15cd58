"""SDXL on the resident modules: both text encoders, size/crop conditioning, the refiner.

Why a module of its own: SDXL differs from SD 1.x only at a few seams -- which pipeline
classes wrap the resident modules, what a prompt encodes to (two encoders' hidden states plus
text_encoder_2's pooled projection), the size/crop numbers its UNet is conditioned on, and the
optional refiner -- so the engine asks this module at those seams and stays one code path.

What a caller may rely on:

* :func:`build_pipeline` wraps the SAME module objects as the loaded base pipeline (no copies);
  :class:`Refiners` loads a refiner's UNet only and builds its pipeline around the base's
  ``text_encoder_2``, ``tokenizer_2`` and VAE (SDXL 1.0's refiner ships copies of exactly
  those; loading them again would waste ~1.5 GB for identical weights).
* Size conditioning is ``original_size = target_size = (height, width)`` of the request and
  ``crops_coords_top_left = (0, 0)``, what diffusers uses by default for a generated image.
  They are functions of the BatchKey's width and height, so they never split a batch.
* Empty negative prompts are zeros when the pipeline's ``force_zeros_for_empty_prompt`` says
  so (SDXL base: yes; refiner: no), decided per image rather than per batch as diffusers does
  (it zeros only when no negative prompt at all is given), so an image does not depend on
  whether its batch partners had negative prompts.
* The refiner (:class:`RefinedPipeline`) is ensemble-of-experts: the base denoises the first
  ``switch_at`` of the schedule and returns latents, the refiner denoises the rest with the
  SAME per-image generators, so batch invariance holds as for the base alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint import (
    StableDiffusionXLInpaintPipeline,
)

from core.batch_key import BatchKey
from core.checkpoints import is_single_file
from core.config import Settings
from core.errors import ModelUnavailable
from worker.builtin.tiny_sdxl import ensure_tiny_sdxl, ensure_tiny_sdxl_refiner
from worker.pipelines.attention import Backend, apply_attention
from worker.pipelines.checkpoints import load_refiner_unet
from worker.pipelines.prompt_cache import PromptEmbeddingCache, TextEncoderState
from worker.pipelines.schedulers import make_scheduler

if TYPE_CHECKING:
    from worker.pipelines.types import PreparedJob

log = logging.getLogger(__name__)

SDXLPipeline = StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline | StableDiffusionXLInpaintPipeline
SDXL_PIPELINES: dict[str, type[SDXLPipeline]] = {
    "txt2img": StableDiffusionXLPipeline,
    "img2img": StableDiffusionXLImg2ImgPipeline,
    "inpaint": StableDiffusionXLInpaintPipeline,
}
#: Source names of the built-in tiny models (worker/builtin/tiny_sdxl.py).
TINY_SDXL = "tiny-sdxl"
TINY_SDXL_REFINER = "tiny-sdxl-refiner"


def builtin_location(source: str, data_dir: Path) -> str | None:
    """The folder of a built-in tiny SDXL model named ``source`` (built on first use), else None."""
    if source == TINY_SDXL:
        return str(ensure_tiny_sdxl(data_dir))
    if source == TINY_SDXL_REFINER:
        return str(ensure_tiny_sdxl_refiner(data_dir))
    return None


def load_options() -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for an SDXL base (instead of SD's safety checker)."""
    # No invisible watermark: it needs the optional invisible-watermark package and changes
    # pixels after decoding; an operator who wants one can add it to the stored images.
    return {"add_watermarker": False}


def pipeline_options(pipe: Any) -> dict[str, Any] | None:
    """The constructor options every per-call pipeline of this SDXL base needs; None if ``pipe``
    is not an SDXL pipeline."""
    if not isinstance(pipe, StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline):
        return None
    config: Any = pipe.config
    return {"force_zeros_for_empty_prompt": bool(config.force_zeros_for_empty_prompt), "add_watermarker": False}


def build_pipeline(mode: str, components: dict[str, Any], options: dict[str, Any]) -> SDXLPipeline:
    """A new SDXL pipeline for ``mode`` around ``components`` (the resident modules plus a fresh
    scheduler). Cheap; never share one between threads."""
    pipe = SDXL_PIPELINES[mode](**components, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _zero_empty(texts: Sequence[str], embeds: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of empty texts set to zeros (SDXL's ``force_zeros_for_empty_prompt``), per row."""
    empty = torch.tensor([text == "" for text in texts], device=embeds.device)
    if not bool(empty.any()):
        return embeds, pooled
    return (
        torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds),
        torch.where(empty[:, None], torch.zeros_like(pooled), pooled),
    )


def expand_texts(jobs: Sequence[PreparedJob]) -> tuple[list[str], list[str]]:
    """(prompts, negative prompts), one per image, in the batch's image order."""
    prompts = [job.payload.prompt for job in jobs for _ in job.payload.seeds]
    negatives = [job.payload.negative_prompt for job in jobs for _ in job.payload.seeds]
    return prompts, negatives


def prompt_arguments(
    cache: PromptEmbeddingCache,
    pipe: Any,
    prompts: Sequence[str],
    negatives: Sequence[str],
    key: BatchKey,
    text_encoder_state: TextEncoderState = (),
    chunks: int = 0,
) -> dict[str, Any]:
    """The SDXL base call's prompt and size-conditioning arguments for one batch.

    Negative prompts are encoded without clip skip, as diffusers does for them; both are padded
    to ``chunks`` 75-token chunks (worker/pipelines/prompt_cache.py).
    """
    embeds, pooled = cache.embed_sdxl(pipe, prompts, key.clip_skip, key.exact, text_encoder_state, chunks)
    negative, negative_pooled = cache.embed_sdxl(pipe, negatives, 0, key.exact, text_encoder_state, chunks)
    if pipe.config.force_zeros_for_empty_prompt:
        negative, negative_pooled = _zero_empty(negatives, negative, negative_pooled)
    return {
        "prompt_embeds": embeds,
        "pooled_prompt_embeds": pooled,
        "negative_prompt_embeds": negative,
        "negative_pooled_prompt_embeds": negative_pooled,
        **size_conditioning(key),
    }


def size_conditioning(key: BatchKey) -> dict[str, Any]:
    """SDXL's micro-conditioning: the image was neither resized nor cropped to this size."""
    size = (key.height, key.width)
    return {"original_size": size, "target_size": size, "crops_coords_top_left": (0, 0)}


# --- the refiner ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Refiner:
    """A loaded refiner: its own UNet and its pipeline options (the rest is the base's)."""

    source: str
    unet: UNet2DConditionModel
    requires_aesthetics_score: bool
    force_zeros_for_empty_prompt: bool

    def pipeline(self, base: dict[str, Any], scheduler: str, scheduler_config: dict[str, Any]) -> Any:
        """A refiner img2img pipeline around the base's ``text_encoder_2``, ``tokenizer_2`` and VAE
        (``base``: the resident components) with a fresh ``scheduler``."""
        absent: Any = None  # the refiner has no first text encoder or tokenizer
        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=base["vae"],
            text_encoder=absent,
            text_encoder_2=base["text_encoder_2"],
            tokenizer=absent,
            tokenizer_2=base["tokenizer_2"],
            unet=self.unet,
            scheduler=cast(Any, make_scheduler(scheduler, scheduler_config)),
            requires_aesthetics_score=self.requires_aesthetics_score,
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


class Refiners:
    """Loads a model's refiner once (on first use or at warm-up) and keeps it resident."""

    def __init__(
        self, settings: Settings, device: torch.device, dtype: torch.dtype, attention: Backend, offline: bool
    ) -> None:
        self._settings = settings
        self._device = device
        self._dtype = dtype
        self._attention = attention
        self._offline = offline
        self._loaded: dict[str, Refiner] = {}
        self._lock = threading.Lock()

    def get(
        self, source: str, base: dict[str, Any], scheduler_config: dict[str, Any], config: str | None = None
    ) -> Refiner:
        """The refiner at ``source`` (loaded on first call) for the base model whose resident
        components are ``base``; ``config`` names a single-file refiner's diffusers config folder
        (None: the shipped one). ModelUnavailable if it cannot load or does not fit."""
        with self._lock:
            refiner = self._loaded.get(source)
            if refiner is None:
                refiner = self._load(source, base, scheduler_config, config)
                self._loaded[source] = refiner
            return refiner

    def _load(self, source: str, base: dict[str, Any], scheduler_config: dict[str, Any], config: str | None) -> Refiner:
        if is_single_file(source):  # an original-layout refiner checkpoint: its UNet only
            unet = load_refiner_unet(source, self._dtype, config)
            cast(Any, unet).to(self._device)  # ModelMixin.to is typed through a decorator mypy misreads
            return self._finish(source, unet, base, scheduler_config, {"requires_aesthetics_score": True})
        location = builtin_location(source, self._settings.data_dir)
        if location is None:
            folder = Path(source).expanduser()
            if source.startswith(("/", ".", "~")) and not folder.is_dir():
                raise ModelUnavailable(f"refiner folder {source!r} does not exist")
            location = str(folder) if folder.is_dir() else source
        pickle_ok = self._settings.allow_pickle_weights
        try:
            index: dict[str, Any] = cast(Any, DiffusionPipeline.load_config(location, local_files_only=self._offline))
            unet = UNet2DConditionModel.from_pretrained(
                location,
                subfolder="unet",
                use_safetensors=None if pickle_ok else True,
                dtype=self._dtype,
                local_files_only=self._offline,
            )
            unet.to(self._device)
        except Exception as exc:
            hint = "expected an SDXL refiner (diffusers folder or hub id) whose unet has safetensors weights"
            raise ModelUnavailable(f"could not load refiner {source!r}: {hint} ({type(exc).__name__}: {exc})") from exc
        return self._finish(source, unet, base, scheduler_config, index)

    def _finish(
        self,
        source: str,
        unet: UNet2DConditionModel,
        base: dict[str, Any],
        scheduler_config: dict[str, Any],
        index: dict[str, Any],
    ) -> Refiner:
        _check_compatible(source, unet, base)
        refiner = Refiner(
            source=source,
            unet=unet,
            requires_aesthetics_score=bool(index.get("requires_aesthetics_score", True)),
            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", False)),
        )
        # Same attention backend as the base (this also re-applies it to the shared VAE: a no-op).
        apply_attention(refiner.pipeline(base, "ddim", scheduler_config), self._attention, explicit=False)
        log.info("loaded refiner %s (UNet only; text_encoder_2 and VAE shared with the base)", source)
        return refiner


def _check_compatible(source: str, unet: UNet2DConditionModel, base: dict[str, Any]) -> None:
    """Refuse a refiner whose UNet cannot take the base's text_encoder_2 output or VAE latents."""
    text_width = int(base["text_encoder_2"].config.hidden_size)
    latent_channels = int(base["vae"].config.latent_channels)
    config: Any = unet.config
    if config.cross_attention_dim != text_width or config.in_channels != latent_channels:
        raise ModelUnavailable(
            f"refiner {source!r} does not fit this base model: its UNet expects text width "
            f"{config.cross_attention_dim} and {config.in_channels} latent channels; the base's "
            f"text_encoder_2 gives {text_width} and its VAE {latent_channels}"
        )


def refiner_prompt_arguments(
    cache: PromptEmbeddingCache,
    base_pipe: Any,
    refiner: Refiner,
    prompts: Sequence[str],
    negatives: Sequence[str],
    key: BatchKey,
    text_encoder_state: TextEncoderState = (),
    chunks: int = 0,
) -> dict[str, Any]:
    """The refiner call's prompt arguments: text_encoder_2's share of the base encodings.

    The base's embeddings are ``[text_encoder | text_encoder_2]`` per token; the refiner's are
    text_encoder_2's alone, through the same module and tokenizer, so slicing the cached base
    encodings gives them bit for bit without a second encoder pass.
    """
    width = int(base_pipe.text_encoder_2.config.hidden_size)
    embeds, pooled = cache.embed_sdxl(base_pipe, prompts, key.clip_skip, key.exact, text_encoder_state, chunks)
    negative, negative_pooled = cache.embed_sdxl(base_pipe, negatives, 0, key.exact, text_encoder_state, chunks)
    negative = negative[..., -width:]
    if refiner.force_zeros_for_empty_prompt:
        negative, negative_pooled = _zero_empty(negatives, negative, negative_pooled)
    return {
        "prompt_embeds": embeds[..., -width:],
        "pooled_prompt_embeds": pooled,
        "negative_prompt_embeds": negative,
        "negative_pooled_prompt_embeds": negative_pooled,
        **size_conditioning(key),
    }


@dataclass
class _Progress:
    """What the engine's step reporter reads from the pipeline it is given: the step total."""

    num_timesteps: int


#: diffusers' ``callback_on_step_end(pipe, step, timestep, kwargs) -> kwargs``.
StepEnd = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


@dataclass
class RefinedPipeline:
    """Base then refiner as ONE callable with a pipeline's call signature, so the engine runs,
    reports and maps errors for a refined batch exactly as for any other.

    Progress counts both phases as one run: ``step`` continues across the handoff and the
    total is the base's steps plus (an estimate, then the refiner's actual count of) the rest.
    """

    base: Any
    refiner: Any
    switch_at: float
    refiner_arguments: dict[str, Any]

    def __call__(self, **call: Any) -> Any:
        output_type = call.pop("output_type", "np")
        callback: StepEnd | None = call.pop("callback_on_step_end", None)
        base_call: dict[str, Any] = {**call, "output_type": "latent", "denoising_end": self.switch_at}
        if callback is not None:
            base_call["callback_on_step_end"] = self._base_progress(callback)
        latents = self.base(**base_call).images
        base_steps = int(self.base.num_timesteps)
        refiner_call: dict[str, Any] = {
            **self.refiner_arguments,
            "image": latents,
            "denoising_start": self.switch_at,
            "num_inference_steps": call["num_inference_steps"],
            "guidance_scale": call["guidance_scale"],
            "generator": call["generator"],  # the same generators, continuing where the base left them
            "output_type": output_type,
        }
        if callback is not None:
            refiner_call["callback_on_step_end"] = self._refiner_progress(callback, base_steps)
        return self.refiner(**refiner_call)

    def _base_progress(self, callback: StepEnd) -> StepEnd:
        def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            done = int(pipe.num_timesteps)
            rest = max(1, round(done * (1 - self.switch_at) / self.switch_at))
            return callback(_Progress(done + rest), step, timestep, kwargs)

        return on_step

    def _refiner_progress(self, callback: StepEnd, base_steps: int) -> StepEnd:
        def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            return callback(_Progress(base_steps + int(pipe.num_timesteps)), base_steps + step, timestep, kwargs)

        return on_step
