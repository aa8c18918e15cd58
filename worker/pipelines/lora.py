"""LoRA adapters on the resident model: loaded on first use, kept in an LRU, switched per batch.

Why adapters and never fusing: a fused LoRA is folded into the base weights, and unfusing
leaves ~1e-6 drift that accumulates over thousands of swaps; an adapter sits beside the base
layer, so switching it off gives the base model bit-for-bit, forever. The cost is one extra
low-rank matmul per adapted layer while a LoRA is active.

What a caller may rely on:

* :meth:`LoraAdapters.activate` makes EXACTLY the requested set active with the requested
  scales, and for an empty set no adapter at all (the base model), whatever ran before.
* Loaded adapters are bounded by count and by bytes (LRU); eviction deletes the adapter's
  layers from the modules (``delete_adapter_layers``), so memory does not grow with the
  number of distinct LoRAs served. A LoRA larger than the whole byte budget is refused
  before its weights are read. The set one batch needs is always loaded together, even when
  it is over the limits (at most max_loras x the byte budget); the surplus is evicted as soon
  as another set runs.
* A LoRA is identified by its name AND its file's size and mtime: replacing a file on disk
  loads the new weights under a new adapter id (and new prompt-cache keys), never a mix.
* Files are read with ``safetensors`` only (no pickle), from ``<lora_dir>/<name>.safetensors``,
  in the diffusers, peft or kohya/A1111 layout (``lora_unet_*``/``lora_te_*`` with alphas,
  LoCon on convolutions too: diffusers' ``load_lora_weights`` converts those). LyCORIS LoHa
  and LoKr files are refused by name and format (core.loras.lora_format).

Not thread-safe: the engine calls it under the lock that also covers the pipeline call,
because the active adapter set is state of the shared modules.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.peft_utils import delete_adapter_layers, set_adapter_layers
from safetensors import safe_open
from safetensors.torch import load_file

from core.errors import GenerationFailed
from core.loras import FORMAT_NAMES, REFUSED_FORMATS, SUFFIX, lora_format, valid_name
from worker.pipelines.prompt_cache import TextEncoderState

log = logging.getLogger(__name__)

#: Adapter weights may be kept in float32 even on a half-precision model (peft upcasts them),
#: so bytes are estimated at 4 per element: an upper bound for every dtype we serve.
_BYTES_PER_ELEMENT = 4


@dataclass(frozen=True)
class LoadedLora:
    name: str
    adapter: str
    nbytes: int
    text_encoder: bool


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def estimate_bytes(path: Path) -> int:
    """Bytes the LoRA's tensors take once loaded, from the safetensors header (no weights read)."""
    total = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
            numel = 1
            for dim in handle.get_slice(key).get_shape():
                numel *= int(dim)
            total += numel * _BYTES_PER_ELEMENT
    return total


#: kohya's text-encoder prefixes (SD: ``lora_te_``; SDXL: ``lora_te1_``/``lora_te2_``), each with
#: the name of the pipeline's encoder it adapts.
_KOHYA_TEXT_PREFIXES = (("lora_te_", "text_encoder"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"))


def _flat_clip_keys(state_dict: dict[str, torch.Tensor], pipe: Any) -> dict[str, torch.Tensor]:
    """Kohya text-encoder keys without ``text_model_`` where the encoder has no such module.

    kohya names CLIP layers from transformers 4's ``CLIPTextModel.text_model``; transformers 5
    flattened that module away. diffusers strips the prefix only when the encoder has no
    ``text_model`` attribute, and ours has one (the read-only view clip_compat adds for
    clip_skip), so without this the text-encoder half of a kohya LoRA fails to load
    (IndexError deep in diffusers' config builder)."""
    renames: dict[str, str] = {}
    for prefix, attr in _KOHYA_TEXT_PREFIXES:
        encoder = getattr(pipe, attr, None)
        if encoder is None or any(name.startswith("text_model.") for name, _ in encoder.named_modules()):
            continue  # a real text_model module: diffusers maps the keys itself
        old = f"{prefix}text_model_"
        renames |= {key: prefix + key[len(old) :] for key in state_dict if key.startswith(old)}
    if not renames:
        return state_dict
    return {renames.get(key, key): value for key, value in state_dict.items()}


class LoraAdapters:
    """The LRU of loaded adapters and the active set; see the module docstring."""

    def __init__(self, folder: Path | None, max_count: int, max_bytes: int) -> None:
        self.folder = folder
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.loads = 0
        self.evictions = 0
        self._entries: OrderedDict[str, LoadedLora] = OrderedDict()  # adapter id -> entry
        self._active: tuple[tuple[str, float], ...] | None = ()

    @property
    def loaded(self) -> list[LoadedLora]:
        """Loaded adapters, least recently used first."""
        return list(self._entries.values())

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def activate(self, pipe: Any, loras: tuple[tuple[str, float], ...]) -> TextEncoderState:
        """Make exactly ``loras`` ((name, scale), ...) active on ``pipe``'s modules.

        ``pipe`` is any pipeline object built around the resident modules. Returns the
        text-encoder part of the state ((adapter id, scale) of each active LoRA that has
        text-encoder layers), which the prompt cache keys on. Raises GenerationFailed (param
        ``loras``) for a LoRA that is missing on this worker or cannot be loaded.
        """
        entries = [self._ensure(pipe, name, {n for n, _ in loras}) for name, _ in loras]
        state = tuple((entry.adapter, scale) for entry, (_, scale) in zip(entries, loras, strict=True))
        if state != self._active:
            self._active = None  # unknown until the switch below completes
            modules = [m for m in (pipe.unet, pipe.text_encoder) if m is not None]
            if state:
                for module in modules:
                    set_adapter_layers(module, enabled=True)
                pipe.set_adapters([a for a, _ in state], adapter_weights=[s for _, s in state])
            else:
                for module in modules:
                    set_adapter_layers(module, enabled=False)
            self._active = state
        self._shrink(pipe, keep={entry.adapter for entry in entries})
        return tuple(pair for entry, pair in zip(entries, state, strict=True) if entry.text_encoder)

    # --- loading and eviction -------------------------------------------------------------

    def _adapter_id(self, name: str, path: Path) -> str:
        try:
            stat = path.stat()
        except OSError:
            raise GenerationFailed(f"LoRA {name!r} is not available on this worker", param="loras") from None
        digest = hashlib.sha256(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        # Module-dict keys may not contain dots, so the id is a digest, never the name itself.
        return f"sfumato_{digest}"

    def _ensure(self, pipe: Any, name: str, pinned: set[str]) -> LoadedLora:
        if self.folder is None or not valid_name(name):
            raise GenerationFailed(f"LoRA {name!r} is not available on this worker", param="loras")
        path = self.folder / f"{name}{SUFFIX}"
        adapter = self._adapter_id(name, path)
        entry = self._entries.get(adapter)
        if entry is not None:
            self._entries.move_to_end(adapter)
            return entry
        # A replaced file: drop the old weights of the same name first.
        for old in [e for e in self._entries.values() if e.name == name]:
            self._evict(pipe, old)
        fmt = lora_format(path)  # a LyCORIS LoHa/LoKr file would fail deep in diffusers
        if fmt in REFUSED_FORMATS:
            message = f"LoRA {name!r} is in the {FORMAT_NAMES[fmt]} format, which this server cannot load"
            raise GenerationFailed(message, param="loras")
        try:
            nbytes = estimate_bytes(path)
        except Exception as exc:
            log.warning("LoRA %s (%s) is unreadable: %s", name, path, _short(exc))  # details for the operator
            message = f"LoRA {name!r} is not a readable safetensors file; the worker's log has the details"
            raise GenerationFailed(message, param="loras") from exc
        if nbytes > self.max_bytes:
            # Checked before reading the weights: a misplaced full checkpoint never loads.
            raise GenerationFailed(
                f"LoRA {name!r} needs ~{nbytes / 2**20:.1f} MiB loaded, more than the worker's LoRA cache "
                f"({self.max_bytes / 2**20:.1f} MiB, SFUMATO_LORA_CACHE_BYTES)",
                param="loras",
            )
        self._make_room(pipe, nbytes, keep={e.adapter for e in self._entries.values() if e.name in pinned})
        entry = self._load(pipe, name, path, adapter, nbytes)
        self._entries[adapter] = entry
        return entry

    def _load(self, pipe: Any, name: str, path: Path, adapter: str, nbytes: int) -> LoadedLora:
        self._active = None  # loading may change which adapters peft marks active
        try:
            state_dict = _flat_clip_keys(load_file(str(path), device="cpu"), pipe)
            with torch.inference_mode(False):
                pipe.load_lora_weights(state_dict, adapter_name=adapter)
        except Exception as exc:
            self._delete_layers(pipe, adapter)  # leave no half-loaded adapter behind
            log.warning("could not load LoRA %s (%s): %s", name, path, _short(exc))  # details for the operator
            message = f"could not load LoRA {name!r} into this model; the worker's log has the details"
            raise GenerationFailed(message, param="loras") from exc
        in_unet = adapter in (getattr(pipe.unet, "peft_config", None) or {})
        in_text = pipe.text_encoder is not None and adapter in (getattr(pipe.text_encoder, "peft_config", None) or {})
        if not (in_unet or in_text):
            self._delete_layers(pipe, adapter)
            raise GenerationFailed(f"LoRA {name!r} matches no layer of this model", param="loras")
        self.loads += 1
        log.info("loaded LoRA %s as %s (%.1f MiB, text encoder: %s)", name, adapter, nbytes / 2**20, in_text)
        return LoadedLora(name=name, adapter=adapter, nbytes=nbytes, text_encoder=in_text)

    def _make_room(self, pipe: Any, incoming: int, keep: set[str]) -> None:
        """Evict least recently used adapters (never those in ``keep``) so one more fits."""
        for entry in list(self._entries.values()):
            if len(self._entries) + 1 <= self.max_count and self.nbytes + incoming <= self.max_bytes:
                return
            if entry.adapter not in keep:
                self._evict(pipe, entry)

    def _shrink(self, pipe: Any, keep: set[str]) -> None:
        """Back within both limits, keeping the active set (which may alone exceed them)."""
        for entry in list(self._entries.values()):
            if len(self._entries) <= self.max_count and self.nbytes <= self.max_bytes:
                return
            if entry.adapter not in keep:
                self._evict(pipe, entry)

    def _evict(self, pipe: Any, entry: LoadedLora) -> None:
        self._entries.pop(entry.adapter, None)
        self._delete_layers(pipe, entry.adapter)
        if self._active is not None and any(a == entry.adapter for a, _ in self._active):
            self._active = None
        self.evictions += 1
        log.info("evicted LoRA %s (%s)", entry.name, entry.adapter)

    @staticmethod
    def _delete_layers(pipe: Any, adapter: str) -> None:
        for module in (pipe.unet, pipe.text_encoder):
            if module is not None:
                delete_adapter_layers(module, adapter)
                config = getattr(module, "peft_config", None)
                if isinstance(config, dict):
                    config.pop(adapter, None)
