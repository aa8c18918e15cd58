"""Single-file checkpoints (CompVis / A1111 layout): read the header, tell the family.

Why here and torch-free: the API builds the served models' specs (family defaults, sizes)
from ``SFUMATO_MODEL`` or the registry and must know whether a ``.safetensors`` file is SD 1.x
or SDXL without importing torch; the worker uses the same answer to pick its configs.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor name ->
dtype, shape, byte offsets) and the data. Reading the header costs a few hundred KB at most,
never the weights, and lets us check that the file is complete (the last tensor ends inside
the file) before a loader maps it.

What each family's detection looks at (the first match wins):

* UNet present: ``model.diffusion_model.input_blocks.0.0.weight``; its input channels (shape[1])
  are 4 (text-to-image) or 9 (inpainting); anything else is unrecognised.
* SDXL base: ``conditioner.embedders.1.model.*`` (OpenCLIP ViT-bigG, the second encoder).
* SDXL refiner: ``conditioner.embedders.0.model.*`` and no ``embedders.1``.
* SD 2.x: ``cond_stage_model.model.*`` (OpenCLIP ViT-H).
* SD 1.x: ``cond_stage_model.transformer.*`` (OpenAI CLIP ViT-L/14).
* v-prediction cannot be seen in the weights: a ``v_pred`` key (the marker ComfyUI and
  several trainers write) means v-prediction; otherwise SD 2.x text-to-image is taken as the
  768-v model (the common SD 2.x checkpoint, as diffusers does) and every other family as
  epsilon. The registry's ``prediction_type`` overrides both.

What a model serves (:func:`source_modes`): a 9-channel (inpainting) UNet reads a mask and a
masked image beside the latents, so it draws only inpainting requests; txt2img and img2img on
it are refused before anything is enqueued (:func:`check_mode`, a 422 naming ``mask``), and
``GET /v1/models`` lists ``modes: ["inpaint"]``. The same holds for a diffusers folder whose
``unet/config.json`` says ``in_channels: 9``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from core.errors import InvalidRequest, ModelUnavailable

Family = Literal["sd1", "sd2", "sdxl", "sdxl-refiner"]
Prediction = Literal["epsilon", "v_prediction"]

#: Largest header we read: real SD/SDXL headers are ~100-300 KB; a bigger one is not a checkpoint.
MAX_HEADER_BYTES = 64 * 1024 * 1024
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SUFFIX = ".safetensors"
#: What a text-to-image UNet serves, and what an inpainting (9-channel) one does.
ALL_MODES: tuple[str, ...] = ("txt2img", "img2img", "inpaint")
INPAINT_ONLY: tuple[str, ...] = ("inpaint",)


def is_single_file(source: str) -> bool:
    """Whether a model ``source`` names a single-file checkpoint (by its suffix)."""
    return source.lower().endswith(SUFFIX)


@dataclass(frozen=True)
class CheckpointInfo:
    """What the header says about a single-file checkpoint."""

    family: Family
    inpaint: bool
    prediction: Prediction
    #: Which keys decided it, for messages and logs.
    evidence: str

    @property
    def modes(self) -> tuple[str, ...]:
        """The request modes this checkpoint can draw (see the module docstring)."""
        return INPAINT_ONLY if self.inpaint else ALL_MODES

    @property
    def config_name(self) -> str:
        """The shipped diffusers config folder for this family (worker/pipelines/single_file_configs)."""
        if self.family == "sdxl-refiner":
            return "sdxl-refiner"
        return f"{self.family}-inpaint" if self.inpaint else self.family


def read_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file; ValueError says what is wrong with the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes is too short for a safetensors file")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or length + 8 > size:
                raise ValueError(f"the header length {length} does not fit the file's {size} bytes (truncated?)")
            raw = handle.read(length)
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("its header is not valid JSON (corrupt, or not a safetensors file)") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a tensor table")
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and isinstance(entry.get("shape"), list)):
            raise ValueError(f"tensor {name!r} has no valid shape/data_offsets in the header")
        end = max(end, int(offsets[1]))
    if 8 + length + end > size:
        raise ValueError(f"the tensors need {8 + length + end} bytes but the file has {size} (truncated)")
    return header


def _has_prefix(keys: list[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)


def detect(header: dict[str, Any]) -> CheckpointInfo:
    """The family of a single-file checkpoint from its keys and shapes; ValueError if unknown."""
    keys = list(header)
    unet_in = header.get(UNET_IN)
    if unet_in is None:
        hint = ""
        if _has_prefix(keys, "lora_") or any(".lora_" in k for k in keys[:200]):
            hint = " (it looks like a LoRA: put it in the LoRA folder)"
        elif _has_prefix(keys, "down_blocks.") or _has_prefix(keys, "unet."):
            hint = " (it looks like diffusers-layout weights: point source at the diffusers folder)"
        raise ValueError(f"no {UNET_IN!r}: not an original-layout Stable Diffusion checkpoint{hint}")
    shape = unet_in.get("shape") or []
    channels = shape[1] if len(shape) == 4 else None
    if channels not in (4, 9):
        raise ValueError(f"the UNet takes {channels} input channels ({UNET_IN} shape {shape}); expected 4 or 9")
    inpaint = channels == 9
    if _has_prefix(keys, "conditioner.embedders.1.model."):
        family: Family = "sdxl"
        evidence = "conditioner.embedders.1.model.* (OpenCLIP bigG)"
    elif _has_prefix(keys, "conditioner.embedders.0.model."):
        family, evidence = "sdxl-refiner", "conditioner.embedders.0.model.* only (refiner)"
        if inpaint:
            raise ValueError("an SDXL refiner with a 9-channel (inpainting) UNet is not a known model")
    elif _has_prefix(keys, "cond_stage_model.model."):
        family, evidence = "sd2", "cond_stage_model.model.* (OpenCLIP ViT-H)"
    elif _has_prefix(keys, "cond_stage_model.transformer."):
        family, evidence = "sd1", "cond_stage_model.transformer.* (CLIP ViT-L/14)"
    else:
        raise ValueError("it has a UNet but no known text encoder keys (cond_stage_model.* or conditioner.embedders.*)")
    if inpaint:
        evidence += ", 9-channel UNet (inpainting)"
    if "v_pred" in header:
        prediction: Prediction = "v_prediction"
        evidence += ", v_pred key"
    elif family == "sd2" and not inpaint:
        prediction = "v_prediction"  # SD 2.x 768-v; the 512 base needs prediction_type = "epsilon"
    else:
        prediction = "epsilon"
    return CheckpointInfo(family=family, inpaint=inpaint, prediction=prediction, evidence=evidence)


def inspect_checkpoint(path: str, model_id: str) -> CheckpointInfo:
    """Read and classify ``path``; :class:`ModelUnavailable` names the model, the file and the fault."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelUnavailable(f"model {model_id!r}: checkpoint file {file.name!r} does not exist")
    try:
        return detect(read_header(file))
    except ValueError as exc:
        raise ModelUnavailable(f"model {model_id!r}: checkpoint {file.name!r} is unusable: {exc}") from None


def served_family(info: CheckpointInfo) -> Literal["sd1", "sd2", "sdxl"]:
    """The service family (ModelSpec.family) of a detected checkpoint."""
    return "sdxl" if info.family in ("sdxl", "sdxl-refiner") else info.family  # type: ignore[return-value]


def source_modes(source: str) -> tuple[str, ...]:
    """The request modes a model ``source`` can serve: only inpainting for a 9-channel UNet (a
    single-file checkpoint's header, or a local diffusers folder's ``unet/config.json``), else all.

    Torch-free and cheap (the header is read once per file version), so the API can call it for
    every served model. A source it cannot read (a hub id, a file only the workers mount, a
    broken file) counts as serving every mode: the worker then refuses a mode its UNet cannot
    draw, and a broken file stops it at start-up.
    """
    path = Path(source).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return ALL_MODES
    return _modes_of(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _modes_of(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    del mtime_ns, size  # only part of the cache key: a replaced file is read again
    file = Path(path)
    try:
        if file.is_dir():
            config = json.loads((file / "unet" / "config.json").read_text())
            return INPAINT_ONLY if config.get("in_channels") == 9 else ALL_MODES
        if is_single_file(path):
            return detect(read_header(file)).modes
    except (OSError, ValueError, AttributeError):
        pass
    return ALL_MODES


def check_mode(model_id: str, modes: Sequence[str], mode: str) -> None:
    """Refuse a request whose mode the model cannot draw (:class:`InvalidRequest`, a 422).

    An inpainting model gets the A1111 way to do the others: a white mask over the whole image
    repaints all of it (img2img), and a mid-grey image under a white mask at strength 1 is what
    A1111 feeds an inpainting model for text-to-image.
    """
    if mode in modes:
        return
    if tuple(modes) == INPAINT_ONLY:
        what = "txt2img (no image)" if mode == "txt2img" else "img2img (an image without a mask)"
        raise InvalidRequest(
            f"mask is required: model {model_id!r} is an inpainting model (its UNet takes 9 input channels) "
            f"and draws only inpainting requests (image and mask), not {what}; for img2img send a white mask "
            "over the whole image, for text-to-image a mid-grey image with a white mask and strength 1",
            param="mask",
        )
    raise InvalidRequest(f"mode is {mode!r}; model {model_id!r} serves only {', '.join(modes)}", param="mode")
