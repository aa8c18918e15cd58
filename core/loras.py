"""The LoRA catalogue: which LoRAs a deployment offers, by name, from one folder.

A LoRA is the file ``<name>.safetensors`` in its model's LoRA folder: the registry entry's
``lora_dir``, else ``Settings.resolved_lora_dir`` (see :func:`lora_folder`). The API lists the
folder to validate requests (names, and the JSON header of a requested file to refuse formats
the worker cannot load, :func:`lora_format`; it never reads weights and never imports torch);
the worker loads the same file by the same name. Both must therefore see the same
folder (one volume mounted in both, or the same path on one host).

Only ``.safetensors`` files are offered: pickle formats (``.bin``, ``.pt``, ``.ckpt``) run code
when loaded, so they are never listed and a request can never name one.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import Settings

if TYPE_CHECKING:
    from core.models import ModelSpec

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
#: Names a client may send: letters, digits, ``_ - .`` (no path separators, no leading dot),
#: at most 100 characters. Files whose stem does not match are not offered.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


def valid_name(name: str) -> bool:
    """Whether ``name`` can be a LoRA name at all (it cannot escape the folder)."""
    return NAME_PATTERN.fullmatch(name) is not None


def lora_folder(settings: Settings, model: ModelSpec | None = None) -> Path:
    """The LoRA folder of ``model``: its registry ``lora_dir``, else the global one.

    Per model because a LoRA is trained for one architecture (an SD 1.5 LoRA does not fit
    SDXL), so each model offers only its own catalogue."""
    if model is not None and model.lora_dir is not None:
        return Path(model.lora_dir)
    return settings.resolved_lora_dir


def available_loras(settings: Settings, model: ModelSpec | None = None) -> list[str]:
    """The names of the LoRAs ``model`` offers, sorted; empty when the folder does not exist.

    Read on every call (a directory listing costs microseconds), so a LoRA copied into the
    folder is offered at once, without restarting anything.
    """
    folder = lora_folder(settings, model)
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot list LoRA folder %s: %s", folder, exc)
        return []
    names = []
    for entry in entries:
        if entry.name.endswith(SUFFIX) and valid_name(entry.name[: -len(SUFFIX)]) and entry.is_file():
            names.append(entry.name[: -len(SUFFIX)])
    return sorted(names)


def lora_path(settings: Settings, name: str, model: ModelSpec | None = None) -> Path:
    """The file of LoRA ``name``; ValueError for a name that is not a valid LoRA name."""
    if not valid_name(name):
        raise ValueError(f"invalid LoRA name {name!r}")
    return lora_folder(settings, model) / f"{name}{SUFFIX}"


#: Formats the API refuses with a 422: recognised, but diffusers 0.42 cannot load them into a
#: UNet (peft has LoHa/LoKr layers, but no converter from LyCORIS files exists). Unreadable and
#: unrecognised files are left to the worker, which reports them when it tries to load them.
REFUSED_FORMATS = frozenset({"loha", "lokr"})
#: What each format is called in messages.
FORMAT_NAMES = {
    "lora": "LoRA",
    "loha": "LyCORIS LoHa",
    "lokr": "LyCORIS LoKr",
    "unknown": "an unrecognised layout",
    "unreadable": "not a readable safetensors file",
}
#: safetensors itself refuses headers larger than this (100 MB); so does the sniff.
_MAX_HEADER = 100_000_000
_format_cache: dict[tuple[str, int, int], str] = {}


def _header_keys(path: Path) -> list[str]:
    """The tensor names of a safetensors file, from its JSON header (no weights read, no torch)."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 0 < length <= _MAX_HEADER:
            raise ValueError(f"header length {length}")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return [key for key in header if key != "__metadata__"]


def _classify(keys: list[str]) -> str:
    if any(".hada_w1_" in key for key in keys):
        return "loha"
    if any(".lokr_w1" in key or ".lokr_w2" in key for key in keys):
        return "lokr"
    lora_markers = (".lora_down.", ".lora_A.", ".lora.down.", ".lora_linear_layer.down.", "_lora.down.")
    if any(marker in key for key in keys for marker in lora_markers):
        return "lora"
    return "unknown"


def lora_format(path: Path) -> str:
    """The format of LoRA file ``path``: a key of :data:`FORMAT_NAMES`, from its header keys.

    Kohya / A1111 (``lora_down``/``lora_up``/``alpha``, LoCon on convolutions too), diffusers and
    peft layouts are all "lora". Decided when a file is first read, then cached by path, size and
    mtime (a replaced file is read again); the API calls it to refuse LoHa/LoKr before
    enqueueing."""
    try:
        stat = path.stat()
    except OSError:
        return "unreadable"
    cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
    found = _format_cache.get(cache_key)
    if found is None:
        try:
            found = _classify(_header_keys(path))
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("LoRA file %s is unreadable: %s", path, exc)
            found = "unreadable"
        if len(_format_cache) > 4096:  # bounded: one entry per file version seen
            _format_cache.clear()
        _format_cache[cache_key] = found
    return found
