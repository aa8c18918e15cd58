"""The LoRA catalogue: which LoRAs a deployment offers, by name, from one folder.

A LoRA is the file ``<name>.safetensors`` in its model's LoRA folder: the registry entry's
``lora_dir``, else ``Settings.resolved_lora_dir`` (see :func:`lora_folder`). The API lists the
folder to validate requests (reading names only: it never opens a file and never imports
torch); the worker loads the same file by the same name. Both must therefore see the same
folder (one volume mounted in both, or the same path on one host).

Only ``.safetensors`` files are offered: pickle formats (``.bin``, ``.pt``, ``.ckpt``) run code
when loaded, so they are never listed and a request can never name one.
"""

from __future__ import annotations

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
