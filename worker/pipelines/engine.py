"""Model residency and batched generation.

One set of components (text encoder, UNet, VAE, tokenizer) is loaded once and stays
resident. txt2img, img2img and inpainting pipelines are thin objects built per call around
those same modules (no weight copies, ~0.3 ms) with a fresh scheduler, because neither a
pipeline object nor a scheduler is safe to share between calls.

A batch is a list of payloads with one :class:`~core.batch_key.BatchKey`; it runs as ONE
pipeline call with one ``torch.Generator`` per image, seeded from that image's seed, so an
image is the same whether it ran alone or co-batched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Concrete module paths: through diffusers' lazy __init__, mypy sees dummy placeholder classes.
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
    StableDiffusionInpaintPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image

from core import prompt_syntax
from core.batch_key import BatchKey
from core.checkpoints import is_single_file
from core.config import Settings
from core.errors import MODEL_FAILED_MESSAGE, GenerationFailed, ModelUnavailable, OutOfMemory, ServiceError
from core.loras import lora_folder
from core.models import ModelSpec, worker_model
from core.schemas import JobPayload, RefinerSettings
from worker.builtin.shapes import MODEL_DIR as SHAPES_MODEL_DIR
from worker.builtin.tiny import ensure_tiny_model
from worker.pipelines import checkpoints, inputs, prompt_weighting, sdxl
from worker.pipelines import controlnet as controlnet_support
from worker.pipelines.attention import Backend, apply_attention, check_attention
from worker.pipelines.clip_compat import ensure_text_model_alias
from worker.pipelines.controlnet import ControlNetModels, ControlNetPipeline
from worker.pipelines.device import apply_torch_threads, resolve_device, resolve_dtype
from worker.pipelines.embeddings import embeddings_folder, load_embeddings
from worker.pipelines.fast_path import FastPath
from worker.pipelines.fast_path import enabled as compile_enabled
from worker.pipelines.latents_tap import offer_latents
from worker.pipelines.lora import LoraAdapters, TextEncoderState
from worker.pipelines.prompt_cache import PromptEmbeddingCache
from worker.pipelines.schedulers import make_scheduler, model_scheduler_config
from worker.pipelines.types import PreparedJob, StepCallback

log = logging.getLogger(__name__)

#: The pipelines built around the resident modules; all take the same components.
_SD1Pipeline = StableDiffusionPipeline | StableDiffusionImg2ImgPipeline | StableDiffusionInpaintPipeline
SDPipeline = _SD1Pipeline | sdxl.SDXLPipeline
_PIPELINES: dict[str, type[_SD1Pipeline]] = {
    "txt2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
}
_TRUTHY = {"1", "true", "yes", "on"}


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read the env again so a setting
    # made later (tests, an entrypoint) is honoured too.
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUTHY


def _short(exc: BaseException) -> str:
    """One line, no traceback: what a client or an operator's dashboard may show."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _load_pipeline(
    source: str, settings: Settings, dtype: torch.dtype, family: str = "sd1"
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """Load the components from the tiny builder, a local diffusers folder or a hub id.

    safetensors only: ``use_safetensors=True`` makes diffusers refuse pickled ``.bin`` weights
    (unpickling can run arbitrary code). ``SFUMATO_ALLOW_PICKLE_WEIGHTS=true`` lets an operator
    load a trusted pickle checkpoint; safetensors files are still preferred where present.
    """
    if settings.allow_pickle_weights:
        log.warning("SFUMATO_ALLOW_PICKLE_WEIGHTS is set: pickle weights of %r may load (they can run code)", source)
    hub = False
    builtin = sdxl.builtin_location(source, settings.data_dir)
    if builtin is not None:
        location, family = builtin, "sdxl"
    elif source == "tiny":
        location = str(ensure_tiny_model(settings.data_dir))
    elif source == "shapes":
        if not (SHAPES_MODEL_DIR / "model_index.json").is_file():
            raise ModelUnavailable(
                f"the built-in shapes model is missing from {SHAPES_MODEL_DIR}; "
                "retrain it from a checkout: python -m training.shapes.train "
                "--out worker/builtin/shapes/model --train-text-encoder"
            )
        location = str(SHAPES_MODEL_DIR)
    elif Path(source).expanduser().is_dir():
        location = str(Path(source).expanduser())
    elif source.startswith(("/", ".", "~")):
        raise ModelUnavailable(f"model folder {source!r} does not exist")
    else:
        location, hub = source, True
    offline = hub and _hub_offline()
    # SDXL (family from the model's spec): both text encoders, no safety checker to switch off.
    cls: type[DiffusionPipeline] = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    options = (
        sdxl.load_options()
        if family == "sdxl"
        else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    )
    try:
        pipe = cls.from_pretrained(
            location,
            use_safetensors=None if settings.allow_pickle_weights else True,
            dtype=dtype,
            local_files_only=offline,
            **options,
        )
    except Exception as exc:
        if offline and isinstance(exc, LocalEntryNotFoundError):
            hint = (
                "it is not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE is set; "
                f"download it first (hf download {source}) or set SFUMATO_MODEL to a local diffusers folder"
            )
        elif hub:
            hint = "expected a hub id of a diffusers Stable Diffusion repo with safetensors weights"
        else:
            hint = "expected a diffusers Stable Diffusion folder with safetensors weights"
        if not settings.allow_pickle_weights:
            hint += " (pickle .bin/.ckpt weights are refused unless SFUMATO_ALLOW_PICKLE_WEIGHTS=true)"
        raise ModelUnavailable(f"could not load model {source!r}: {hint} ({_short(exc)})") from exc
    if not isinstance(pipe, StableDiffusionPipeline | StableDiffusionXLPipeline):  # pragma: no cover
        raise ModelUnavailable(f"model {source!r} is not a Stable Diffusion 1.x/2.x/XL pipeline")
    return pipe


@dataclass
class _StepReporter:
    """Adapts ``on_step`` to diffusers' ``callback_on_step_end`` and remembers what it raised."""

    on_step: StepCallback | None
    error: BaseException | None = None

    def __call__(self, pipe: DiffusionPipeline, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.on_step is not None:
            try:
                offer_latents(kwargs.get("latents"))  # for previews (worker/runtime/progress.py)
                # num_timesteps, not steps: Heun evaluates twice per step, img2img fewer.
                self.on_step(step + 1, int(getattr(pipe, "num_timesteps", 0) or 0))
            except BaseException as exc:
                self.error = exc
                raise
        return kwargs


class Engine:
    """The resident model. Build with :meth:`load`, then :meth:`warmup`, then :meth:`generate`.

    Each call builds its own pipeline object and scheduler; calls from several threads are
    serialised (the active LoRA set is state of the shared modules), so the runner should
    run one batch at a time anyway.
    """

    #: Textual-inversion tokens loaded at start-up (worker/pipelines/embeddings.py); fixed for its life.
    embeddings: tuple[str, ...] = ()
    #: Loads the SDXL refiner of ``spec.refiner`` once (worker/pipelines/sdxl.py); None: refiners unavailable.
    refiners: sdxl.Refiners | None = None
    #: The compiled UNet / VAE decoder (worker/pipelines/fast_path.py); None: SFUMATO_COMPILE is off.
    fast_path: FastPath | None = None

    def __init__(
        self,
        spec: ModelSpec,
        pipe: StableDiffusionPipeline | StableDiffusionXLPipeline,
        device: torch.device,
        dtype: torch.dtype,
        attention: Backend,
        prompt_cache: PromptEmbeddingCache | None = None,
        loras: LoraAdapters | None = None,
    ) -> None:
        self.spec = spec
        # No folder: every LoRA request fails with "not available on this worker".
        self.loras = loras if loras is not None else LoraAdapters(None, max_count=1, max_bytes=1)
        # The active LoRA set is state of the shared modules: activating it and running the
        # pipeline call must not interleave with another batch's.
        self._lock = threading.Lock()
        self.prompt_cache = prompt_cache if prompt_cache is not None else PromptEmbeddingCache(capacity=0)
        self.device = device
        self.dtype = dtype
        self.attention = attention
        # Only the modules are kept: per-call pipelines are built around them.
        self._components: dict[str, Any] = dict(pipe.components)
        self._scheduler_config = model_scheduler_config(pipe.scheduler.config, spec.timestep_spacing)
        # Not None for an SDXL base: per-call pipelines are then the SDXL ones (worker/pipelines/sdxl.py).
        self._sdxl_options = sdxl.pipeline_options(pipe)
        # Replaced by load() with the configured cache; ControlNets load on first use.
        self.controlnets = ControlNetModels(2, device, dtype, attention=attention)
        # Most 75-token chunks a prompt may encode to (SFUMATO_MAX_PROMPT_CHUNKS; 0: no limit).
        self.max_prompt_chunks = 0
        # Tokenizers (and textual-inversion tokens) for counting a job's prompt chunks.
        self._tokenizing = self.pipeline("txt2img", "ddim")  # any scheduler: only tokenizers are used

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        """Load this worker's model (SFUMATO_WORKER_MODEL, else the first served one) onto the
        configured device, with its embeddings; raises ModelUnavailable."""
        started = time.perf_counter()
        spec = worker_model(settings)
        apply_torch_threads(settings.torch_threads)
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        backend = check_attention(settings.attention, device)  # before spending time on weights
        compiling = compile_enabled(settings, device)
        if compiling and settings.attention == "auto":
            backend = "sdpa"  # dynamo traces SDPA into the graph; xformers' kernels would break it
        if is_single_file(spec.source):  # an original-layout .safetensors (worker/pipelines/checkpoints.py)
            pipe = checkpoints.load_checkpoint(spec, dtype)
        else:
            pipe = _load_pipeline(spec.source, settings, dtype, spec.family)
            checkpoints.apply_vae_override(spec, pipe, getattr(pipe.config, "_name_or_path", None), dtype)
        try:
            pipe.to(device)
        except Exception as exc:
            raise ModelUnavailable(f"could not move model {spec.id!r} to {device}: {_short(exc)}") from exc
        backend = apply_attention(pipe, backend, explicit=settings.attention != "auto")
        ensure_text_model_alias(pipe.text_encoder)  # clip_skip with transformers 5
        # Once, before any prompt is encoded: the registry's list, then the model's folder.
        embeddings = load_embeddings(pipe, spec.id, spec.embeddings, folder=embeddings_folder(settings, spec))
        log.info(
            "loaded model %s from %s on %s (%s, attention=%s) in %.2fs",
            spec.id, spec.source, device, str(dtype).removeprefix("torch."), backend,
            time.perf_counter() - started,
        )  # fmt: skip
        loras = LoraAdapters(lora_folder(settings, spec), settings.lora_cache_size, settings.lora_cache_bytes)
        # Encoding a batch's prompts together is batch-invariant only in float32 (prompt_cache.py).
        prompt_cache = PromptEmbeddingCache(settings.prompt_cache_size, encode_together=dtype == torch.float32)
        engine = cls(spec, pipe, device, dtype, backend, prompt_cache, loras)
        engine.embeddings = embeddings
        engine.max_prompt_chunks = settings.max_prompt_chunks
        if compiling:  # the forwards are replaced now; graphs compile in warmup()
            engine.fast_path = FastPath.install(settings, device, pipe.unet, pipe.vae)
        engine.refiners = sdxl.Refiners(settings, device, dtype, backend, offline=_hub_offline())
        engine.controlnets = ControlNetModels(
            settings.controlnet_cache_size, device, dtype, attention=backend,
            allow_pickle=settings.allow_pickle_weights, local_files_only=_hub_offline(),
        )  # fmt: skip
        return engine

    # --- generation --------------------------------------------------------------------

    def pipeline(self, mode: str, scheduler: str) -> SDPipeline:
        """A new lightweight pipeline for ``mode`` around the resident modules, with a fresh
        ``scheduler`` (canonical name). Cheap; never share one between threads."""
        components = {**self._components, "scheduler": make_scheduler(scheduler, self._scheduler_config)}
        if self._sdxl_options is not None:
            return sdxl.build_pipeline(mode, components, self._sdxl_options)
        cls = _PIPELINES[mode]
        pipe = cls(**components, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generate(self, payloads: Sequence[JobPayload], on_step: StepCallback | None = None) -> list[list[Image.Image]]:
        """Run ``payloads`` (one BatchKey) as one pipeline call; one list of images per payload.

        Raises ValueError for payloads that cannot run together (a caller bug),
        GenerationFailed for a job that cannot run (broken upload, too few img2img steps) or
        when the model raises; whatever ``on_step`` raises propagates as is.
        """
        arrays = self.generate_arrays(payloads, on_step)
        return [VaeImageProcessor.numpy_to_pil(batch) for batch in arrays]

    def generate_arrays(self, payloads: Sequence[JobPayload], on_step: StepCallback | None = None) -> list[np.ndarray]:
        """Like :meth:`generate` but the float images in [0, 1], shape ``(n, height, width, 3)``
        per payload, before 8-bit quantisation (exact comparisons in tests and benchmarks)."""
        self._batch_key(payloads)  # caller mistakes first, before decoding anything
        return self.run([self.prepare(p) for p in payloads], on_step)

    def prepare(self, payload: JobPayload) -> PreparedJob:
        """Check one job and decode its uploads; GenerationFailed fails only this job."""
        key = self._batch_key([payload])
        checkpoints.check_unet_mode(self._components["unet"], self.spec.id, key.mode)  # 9-channel: inpaint only
        self.prompt_chunks(payload)  # malformed weights, too many chunks: this job only
        control = controlnet_support.control_images(payload.controlnet, key.width, key.height)
        if key.mode == "txt2img":
            return PreparedJob(payload, control=control)
        image = inputs.init_image(payload.image_b64, key.width, key.height)
        mask = inputs.mask_image(payload.mask_b64, key.width, key.height) if key.mode == "inpaint" else None
        return PreparedJob(payload, image, mask, control)

    def run(self, jobs: Sequence[PreparedJob], on_step: StepCallback | None = None) -> list[np.ndarray]:
        """Run prepared jobs (one BatchKey) as ONE pipeline call; float images per job.

        Raises :class:`OutOfMemory` when the device runs out of memory (the caller may retry in
        smaller batches), GenerationFailed when the model raises; ``on_step``'s errors as is.
        """
        key = self._batch_key([job.payload for job in jobs])
        # Jobs whose prompts encode to different chunk counts run as separate calls: padding a
        # short prompt with empty chunks would change its image (more tokens to attend to), and
        # an image must not depend on its batch partners (worker/pipelines/prompt_weighting.py).
        groups: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(self.prompt_chunks(job.payload), []).append(index)
        if len(groups) == 1:
            return self._run(jobs, key, next(iter(groups)), on_step)
        results: list[np.ndarray] = [np.empty(0)] * len(jobs)
        for chunks, indices in groups.items():
            for index, images in zip(indices, self._run([jobs[i] for i in indices], key, chunks, on_step), strict=True):
                results[index] = images
        return results

    def prompt_chunks(self, payload: JobPayload) -> int:
        """The 75-token chunks the job's prompt and negative prompt are padded to (the larger
        count, as A1111 pads them); GenerationFailed naming the field past the limit."""
        counts = []
        for field in ("prompt", "negative_prompt"):
            text = getattr(payload, field)
            error = prompt_syntax.weight_error(text)
            if error is not None:
                raise GenerationFailed(f"{field}: {error}", param=field)
            count = prompt_weighting.chunk_count(self._tokenizing, prompt_syntax.parse_attention(text))
            if self.max_prompt_chunks and count > self.max_prompt_chunks:
                raise GenerationFailed(
                    f"{field} encodes to {count} chunks (75 tokens each); the maximum is {self.max_prompt_chunks} "
                    "(SFUMATO_MAX_PROMPT_CHUNKS)",
                    param=field,
                )
            counts.append(count)
        return max(counts)

    def _run(
        self, jobs: Sequence[PreparedJob], key: BatchKey, chunks: int, on_step: StepCallback | None
    ) -> list[np.ndarray]:
        """:meth:`run` for jobs whose prompts all pad to ``chunks`` chunks: one pipeline call."""
        with self._lock:
            pipe = self._controlnet_pipeline(key) if key.controlnets else self.pipeline(key.mode, key.scheduler)
            # Exactly this batch's LoRAs (none for a base batch), before prompts are encoded.
            text_encoder_state = self.loras.activate(pipe, key.loras)
            call = self._call_arguments(jobs, key, pipe, text_encoder_state, chunks)
            if key.controlnets:  # each image gets its own job's control maps
                maps = [job.control for job in jobs for _ in range(job.payload.n)]
                call.update(controlnet_support.call_arguments(key, maps))
            with self._compiled_for(key):
                if key.refiner_switch_at is not None:  # SDXL base, then its refiner (worker/pipelines/sdxl.py)
                    refined = self._refined(pipe, jobs, key, text_encoder_state, chunks)
                    return self._call(refined, call, jobs, key, on_step)
                return self._call(pipe, call, jobs, key, on_step)

    def _compiled_for(self, key: BatchKey) -> contextlib.AbstractContextManager[None]:
        """The compiled fast path for this batch, or eager: ``exact`` batches stay bit-identical
        to a worker without compilation, LoRA batches never recompile on an adapter change nor
        meet frozen weights, ControlNet residuals would add graphs (worker/pipelines/fast_path.py)."""
        if self.fast_path is None:
            return contextlib.nullcontext()
        return self.fast_path.engaged(not (key.exact or key.loras or key.controlnets))

    def _refined(
        self,
        pipe: Any,
        jobs: Sequence[PreparedJob],
        key: BatchKey,
        text_encoder_state: TextEncoderState,
        chunks: int = 0,
    ) -> sdxl.RefinedPipeline:
        """``pipe`` followed by the model's refiner; GenerationFailed if this model has none."""
        if not self._has_refiner():
            raise GenerationFailed(f"model {self.spec.id!r} has no refiner on this worker", param="refiner")
        refiner = self._refiner()
        prompts, negatives = sdxl.expand_texts(jobs)
        arguments = sdxl.refiner_prompt_arguments(
            self.prompt_cache, pipe, refiner, prompts, negatives, key, text_encoder_state, chunks
        )
        refiner_pipe = refiner.pipeline(self._components, key.scheduler, self._scheduler_config)
        return sdxl.RefinedPipeline(pipe, refiner_pipe, key.refiner_switch_at or 0.0, arguments)

    def _controlnet_pipeline(self, key: BatchKey) -> ControlNetPipeline:
        """Like :meth:`pipeline`, with the batch's ControlNet model(s) (loaded on first use,
        kept in an LRU: worker/pipelines/controlnet.py) beside the same resident modules."""
        if self._sdxl_options is not None:  # the API refuses these (core/controlnets.py)
            raise GenerationFailed("ControlNet is not supported for SDXL models yet", param="controlnet")
        models = self.controlnets.get(controlnet_support.specs_for(key, self.spec.controlnets))
        components = {**self._components, "scheduler": make_scheduler(key.scheduler, self._scheduler_config)}
        return controlnet_support.build_pipeline(key.mode, components, models)

    def _call(
        self,
        pipe: SDPipeline | ControlNetPipeline | sdxl.RefinedPipeline,
        call: dict[str, Any],
        jobs: Sequence[PreparedJob],
        key: BatchKey,
        on_step: StepCallback | None,
    ) -> list[np.ndarray]:
        """The pipeline call itself, with errors mapped; one float array per job."""
        reporter = _StepReporter(on_step)
        # Passed through the dict: the inpainting pipeline annotates the callback with the
        # legacy (step, timestep) signature although it calls the new one.
        call.update(output_type="np", callback_on_step_end=reporter)
        out_of_memory = ""
        try:
            with torch.inference_mode():
                output: Any = pipe(**call)
        except torch.OutOfMemoryError as exc:
            # Raised below, outside this block: the OOM's traceback holds the frames of the
            # failed call and with them its activations; chained to OutOfMemory they would stay
            # allocated while the caller retries in halves (seen on a real GPU: every half then
            # ran out too). Only the message is kept.
            out_of_memory = _short(exc)
        except Exception as exc:
            if exc is reporter.error or isinstance(exc, ServiceError):
                raise
            log.exception("generation failed for %d job(s), batch %s", len(jobs), key.digest())
            raise GenerationFailed(MODEL_FAILED_MESSAGE) from exc  # the details are in the log above
        if out_of_memory:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # give the next (smaller) batch the memory just freed
            count = sum(job.payload.n for job in jobs)
            log.warning("out of device memory for a batch of %d image(s): %s", count, out_of_memory)
            raise OutOfMemory(f"out of device memory for a batch of {count} image(s)")
        images = np.asarray(output.images, dtype=np.float32)
        results, start = [], 0
        for job in jobs:
            results.append(images[start : start + job.payload.n])
            start += job.payload.n
        return results

    def warmup(self) -> None:
        """One 1-step generation at the model's default size, so the first real request does not
        pay for lazy initialisation (kernels, allocator, tokenizer caches); with the compiled
        fast path, one more per batch bucket, compiling each graph before the worker is ready."""
        started = time.perf_counter()
        self.generate_arrays([self._warmup_payload(0)])
        if self._has_refiner():
            self._refiner()  # loaded now: a broken refiner fails the worker's start, not a request
        if self.fast_path is not None:
            self._compile_buckets(self.fast_path)
        log.info("warm-up took %.2fs", time.perf_counter() - started)

    def _compile_buckets(self, fast_path: FastPath) -> None:
        """Compile the UNet (and VAE decoder) graph of every batch bucket at the default size."""
        size = f"{self.spec.default_width}x{self.spec.default_height}"
        for number, bucket in enumerate(fast_path.buckets, 1):
            log.info("compiling batch bucket %d at %s (%d of %d)...", bucket, size, number, len(fast_path.buckets))
            started = time.perf_counter()
            self.generate_arrays([self._warmup_payload(seed) for seed in range(bucket)])
            if self._has_refiner():  # the refiner's UNet graphs too: 2 steps, the second refined
                refined = {"steps": 2, "refiner": RefinerSettings(switch_at=0.5)}
                self.generate_arrays([self._warmup_payload(seed).model_copy(update=refined) for seed in range(bucket)])
            log.info("batch bucket %d at %s ready in %.1fs", bucket, size, time.perf_counter() - started)
        fast_path.mark_ready()

    def _has_refiner(self) -> bool:
        return self.spec.refiner is not None and self.refiners is not None and self._sdxl_options is not None

    def _refiner(self) -> sdxl.Refiner:
        """The model's refiner (loaded on first use), its UNet on the fast path when there is
        one: a refiner loaded at warm-up or later joins it (adopting twice is a no-op)."""
        assert self.refiners is not None and self.spec.refiner is not None  # callers check _has_refiner
        refiner = self.refiners.get(
            self.spec.refiner, self._components, self._scheduler_config, self.spec.refiner_config
        )
        if self.fast_path is not None:
            self.fast_path.adopt("refiner_unet", refiner.unet)
        return refiner

    def _warmup_payload(self, seed: int) -> JobPayload:
        """A 1-step txt2img job at the model's defaults (warm-up's jobs share one BatchKey)."""
        return JobPayload(
            job_id="warmup",
            tenant="_warmup",
            model=self.spec.id,
            mode="txt2img",
            prompt="warmup",
            negative_prompt="",
            width=self.spec.default_width,
            height=self.spec.default_height,
            steps=1,
            guidance_scale=self.spec.default_guidance,
            scheduler=self.spec.default_scheduler,
            seed=seed,
            n=1,
            clip_skip=0,
            output_format="png",
            created_at=time.time(),
        )

    # --- helpers -----------------------------------------------------------------------

    def _batch_key(self, payloads: Sequence[JobPayload]) -> BatchKey:
        """The one BatchKey of ``payloads``. ValueError for a caller's mistake (mixed keys,
        another model); GenerationFailed for a job that cannot run as queued."""
        if not payloads:
            raise ValueError("generate() needs at least one payload")
        key = BatchKey.of(payloads[0])
        for payload in payloads[1:]:
            if BatchKey.of(payload) != key:
                raise ValueError(
                    f"job {payload.job_id} cannot share a batch with job {payloads[0].job_id}: their batch keys differ"
                )
        if key.model != self.spec.id:
            raise ValueError(f"this engine serves model {self.spec.id!r}, not {key.model!r}")
        if key.mode != "txt2img":
            if key.strength is None:
                raise GenerationFailed(f"{key.mode} needs a strength", param="strength")
            if int(key.steps * key.strength) < 1:
                # diffusers runs int(steps x strength) steps and fails obscurely on zero.
                raise GenerationFailed(
                    f"steps x strength must be at least 1 (steps={key.steps}, strength={key.strength:g}): "
                    "raise steps or strength",
                    param="strength",
                )
        return key

    def _call_arguments(
        self,
        jobs: Sequence[PreparedJob],
        key: BatchKey,
        pipe: SDPipeline | ControlNetPipeline,
        text_encoder_state: TextEncoderState = (),
        chunks: int = 0,
    ) -> dict[str, Any]:
        """The keyword arguments of the one pipeline call: per-image lists plus per-call values.

        Prompts go in as cached embeddings (misses encoded together; see worker/pipelines/prompt_cache.py),
        keyed also on the active text-encoder LoRAs, padded to ``chunks`` 75-token chunks.
        Negative prompts are encoded without clip skip, as diffusers does for them.
        """
        prompts: list[str] = []
        negatives: list[str] = []
        generators: list[torch.Generator] = []
        images: list[Image.Image] = []
        masks: list[Image.Image] = []
        for job in jobs:
            for seed in job.payload.seeds:
                prompts.append(job.payload.prompt)
                negatives.append(job.payload.negative_prompt)
                generators.append(torch.Generator(device=self.device).manual_seed(seed))
                if job.image is not None:
                    images.append(job.image)
                if job.mask is not None:
                    masks.append(job.mask)
        if self._sdxl_options is not None:  # both text encoders, pooled embeddings, size conditioning
            call = sdxl.prompt_arguments(self.prompt_cache, pipe, prompts, negatives, key, text_encoder_state, chunks)
        else:
            cache, state = self.prompt_cache, text_encoder_state
            call = {
                "prompt_embeds": cache.embed(pipe, prompts, key.clip_skip, key.exact, state, chunks),
                "negative_prompt_embeds": cache.embed(pipe, negatives, 0, key.exact, state, chunks),
            }
        call.update(generator=generators, num_inference_steps=key.steps, guidance_scale=key.guidance_scale)
        if key.mode in ("txt2img", "inpaint"):
            call.update(height=key.height, width=key.width)
        if key.mode != "txt2img":
            call.update(image=images, strength=key.strength)
        if key.mode == "inpaint":
            call["mask_image"] = masks
        return call
