"""Loading single-file checkpoints (CompVis / A1111 layout) and a model's VAE override.

Why: most models people have are one ``.safetensors`` file as civitai, A1111 and ComfyUI keep
them. diffusers' single-file loader converts such a file to its own modules, but it needs a
diffusers config folder for the architecture and would download one from the hub. The configs
for each family ship in ``single_file_configs/<family>/`` (the hub repos' JSON files, no
weights), so loading works offline; the family comes from the file's keys
(:mod:`core.checkpoints`), and a registry ``config`` folder replaces ours for an unusual
architecture (or the built-in tiny model's layout).

The CLIP BPE vocabulary (``clip_bpe/vocab.json`` + ``merges.txt``, 1.6 MB, identical in every
SD/SDXL tokenizer) ships once; each family's tokenizer folder holds only its settings (the pad
token differs: ``<|endoftext|>`` for CLIP ViT-L, ``!`` for OpenCLIP's). A config folder that has
its own ``vocab.json`` or ``tokenizer.json`` is loaded as it is.

Every failure is :class:`ModelUnavailable` naming the model, the file and what was wrong, so the
worker stops at start-up instead of failing requests.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from transformers import CLIPTokenizer

from core.checkpoints import (
    ALL_MODES,
    INPAINT_ONLY,
    CheckpointInfo,
    check_mode,
    inspect_checkpoint,
    is_single_file,
    served_family,
)
from core.errors import GenerationFailed, InvalidRequest, ModelUnavailable
from core.models import ModelSpec

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).parent / "single_file_configs"
_BPE = CONFIGS_DIR / "clip_bpe"
_PIPELINE_OPTIONS: dict[str, Any] = {
    "safety_checker": None,
    "feature_extractor": None,
    "requires_safety_checker": False,
}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def config_folder(info: CheckpointInfo, override: str | None) -> Path:
    """The diffusers config folder for a checkpoint: the registry's ``config``, else ours."""
    folder = Path(override).expanduser() if override else CONFIGS_DIR / info.config_name
    if not (folder / "model_index.json").is_file() and not (folder / "unet" / "config.json").is_file():
        raise ValueError(f"config folder {folder.name!r} has no model_index.json (not a diffusers config folder)")
    return folder


def _tokenizer(folder: Path) -> CLIPTokenizer | None:
    """A tokenizer for ``folder`` (e.g. ``<config>/tokenizer``) from the shipped BPE files; None when
    the folder is absent (the pipeline has no such tokenizer) or has its own vocabulary."""
    if not folder.is_dir() or (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file():
        return None
    settings = (
        json.loads((folder / "tokenizer_config.json").read_text())
        if (folder / "tokenizer_config.json").is_file()
        else {}
    )
    pad = settings.get("pad_token", "<|endoftext|>")
    pad = pad.get("content", "<|endoftext|>") if isinstance(pad, dict) else str(pad)
    vocab, merges = _clip_bpe()
    # transformers annotates merges as list[str]; the tokenizers backend takes (left, right) pairs.
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=cast(Any, list(merges)),
        pad_token=pad,
        model_max_length=int(settings.get("model_max_length", 77)),
    )


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The shipped CLIP BPE vocabulary and merges (the first line of merges.txt is a version)."""
    vocab = json.loads((_BPE / "vocab.json").read_text(encoding="utf-8"))
    lines = (_BPE / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = tuple((left, right) for left, right in (line.split() for line in lines if line.strip()))
    return vocab, merges


def _check_family(spec: ModelSpec, info: CheckpointInfo, file: str) -> None:
    """The registry's family must agree with the file's (``tiny`` is an SD 1.x-shaped pipeline)."""
    if info.family == "sdxl-refiner":
        raise ModelUnavailable(
            f"model {spec.id!r}: checkpoint {file!r} is an SDXL refiner ({info.evidence}); "
            "name it as the 'refiner' of an SDXL model, not as a model's source"
        )
    detected = served_family(info)
    declared = "sd1" if spec.family == "tiny" else spec.family
    if detected != declared:
        raise ModelUnavailable(
            f"model {spec.id!r}: the registry says family {spec.family!r} but checkpoint {file!r} is "
            f"{detected!r} ({info.evidence}); fix 'family' or 'source'"
        )


def load_checkpoint(spec: ModelSpec, dtype: torch.dtype) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """The pipeline of the single-file checkpoint ``spec.source``, offline, with the prediction
    type set (registry ``prediction_type`` > ``v_pred`` key > family default or ``config``'s)."""
    file = Path(spec.source).expanduser()
    info = inspect_checkpoint(spec.source, spec.id)
    _check_family(spec, info, file.name)
    try:
        folder = config_folder(info, spec.config)
    except ValueError as exc:
        raise ModelUnavailable(f"model {spec.id!r}: {exc}") from None
    cls: type[StableDiffusionPipeline] | type[StableDiffusionXLPipeline] = (
        StableDiffusionXLPipeline if info.family == "sdxl" else StableDiffusionPipeline
    )
    parts: dict[str, Any] = {} if info.family == "sdxl" else dict(_PIPELINE_OPTIONS)
    if info.family == "sdxl":
        parts["add_watermarker"] = False
    for name in ("tokenizer", "tokenizer_2"):
        tokenizer = _tokenizer(folder / name)
        if tokenizer is not None:
            parts[name] = tokenizer
    if spec.vae is not None:
        parts["vae"] = load_vae(spec, folder, dtype)
    try:
        pipe = cls.from_single_file(str(file), config=str(folder), local_files_only=True, dtype=dtype, **parts)
    except Exception as exc:
        raise ModelUnavailable(
            f"model {spec.id!r}: could not load checkpoint {file.name!r} as {info.config_name} "
            f"(config folder {folder.name!r}): {_short(exc)}"
        ) from exc
    prediction = spec.prediction_type
    if prediction is None and (spec.config is None or "v_pred key" in info.evidence):
        prediction = info.prediction
    if prediction is not None and pipe.scheduler.config.get("prediction_type") != prediction:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction)
    log.info(
        "model %s: single-file checkpoint %s detected as %s (%s), prediction %s, modes %s",
        spec.id, file.name, info.config_name, info.evidence, pipe.scheduler.config.get("prediction_type"),
        "/".join(info.modes),
    )  # fmt: skip
    return pipe


def unet_modes(unet: Any) -> tuple[str, ...]:
    """What a loaded UNet can draw: a 9-channel (inpainting) UNet reads a mask and a masked
    image beside the latents, so it serves only inpainting (core/checkpoints.py)."""
    return INPAINT_ONLY if int(unet.config.in_channels) == 9 else ALL_MODES


def check_unet_mode(unet: Any, model_id: str, mode: str) -> None:
    """The worker's own check (a job the API let through, e.g. enqueued by an API that could
    not read the file): :class:`GenerationFailed` naming ``mask`` for a mode ``unet`` cannot draw,
    instead of a shape error from inside the UNet."""
    try:
        check_mode(model_id, unet_modes(unet), mode)
    except InvalidRequest as exc:
        raise GenerationFailed(exc.message, param=exc.param) from None


def load_vae(spec: ModelSpec, folder: Path | None, dtype: torch.dtype) -> AutoencoderKL:
    """The VAE named by ``spec.vae``: a diffusers folder (``AutoencoderKL`` or a pipeline's ``vae/``)
    or a single ``.safetensors`` file in either layout, configured from ``folder``'s ``vae/``."""
    assert spec.vae is not None
    path = Path(spec.vae).expanduser()
    try:
        if path.is_dir():
            sub = "vae" if (path / "vae" / "config.json").is_file() else None
            return AutoencoderKL.from_pretrained(str(path), subfolder=sub, use_safetensors=True, dtype=dtype)
        if not is_single_file(spec.vae) or not path.is_file():
            raise ValueError(f"{path.name!r} is neither a diffusers folder nor a .safetensors file")
        if folder is None:
            raise ValueError(
                "a single-file VAE needs a model whose VAE config is known (a diffusers folder or checkpoint)"
            )
        vae: AutoencoderKL = AutoencoderKL.from_single_file(
            str(path), config=str(folder), subfolder="vae", local_files_only=True, dtype=dtype
        )
        return vae
    except Exception as exc:
        raise ModelUnavailable(f"model {spec.id!r}: could not load vae {path.name!r}: {_short(exc)}") from exc


def apply_vae_override(spec: ModelSpec, pipe: Any, location: str | None, dtype: torch.dtype) -> None:
    """Replace a diffusers-folder model's VAE with ``spec.vae`` (single files take it at load)."""
    if spec.vae is None or is_single_file(spec.source):
        return
    folder = Path(location) if location and (Path(location) / "vae" / "config.json").is_file() else None
    pipe.vae = load_vae(spec, folder, dtype)


def load_refiner_unet(source: str, dtype: torch.dtype, config: str | None = None) -> UNet2DConditionModel:
    """The UNet of a single-file SDXL refiner checkpoint (the refiner shares the base's text
    encoder and VAE, so only its UNet is read). ``config``: a diffusers folder with the UNet's
    ``unet/config.json`` for an architecture the shipped refiner config does not describe (as a
    model's registry ``config``); None: the shipped one for the detected family."""
    file = Path(source).expanduser()
    info = inspect_checkpoint(source, "refiner")
    if info.family not in ("sdxl-refiner", "sdxl"):
        raise ModelUnavailable(
            f"refiner checkpoint {file.name!r} is {info.family!r} ({info.evidence}), not an SDXL refiner"
        )
    try:
        folder = config_folder(info, config)
    except ValueError as exc:
        raise ModelUnavailable(f"refiner checkpoint {file.name!r}: {exc}") from None
    try:
        unet: UNet2DConditionModel = UNet2DConditionModel.from_single_file(
            str(file), config=str(folder), subfolder="unet", local_files_only=True, dtype=dtype
        )
    except Exception as exc:
        raise ModelUnavailable(f"could not load refiner checkpoint {file.name!r}: {_short(exc)}") from exc
    return unet
