"""The short file hashes A1111 writes into infotext, so an image's resources can be found again
(civitai and image browsers look models and LoRAs up by them).

* ``Model hash``: the first 10 hex digits of the SHA-256 of the whole checkpoint file
  (A1111 ``sd_models.CheckpointInfo.shorthash``). A diffusers folder or hub id is no single
  file, so it has none and the entry is left out.
* ``Lora hashes``: the first 12 hex digits of the "addnet" hash of a ``.safetensors`` LoRA:
  the SHA-256 of the file after its JSON header (A1111 ``hashes.addnet_hash_safetensors``;
  civitai's AutoV3), so editing a LoRA's metadata does not change it.

Each file is hashed once per (path, size, mtime) and the answer cached for the worker's life: a
multi-GB checkpoint is read once, when the first image needs it. Stdlib only.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

_CHUNK = 1 << 20
_cache: dict[tuple[str, str, int, int], str] = {}
_lock = threading.Lock()


def _digest(path: Path, skip_header: bool) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        if skip_header:
            length = int.from_bytes(handle.read(8), "little")
            handle.seek(8 + length)
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _cached(path: Path, kind: str) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (kind, str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:  # one hashing at a time: two threads never read the same big file twice
        found = _cache.get(key)
        if found is None:
            try:
                found = _digest(path, skip_header=kind == "addnet")
            except OSError:
                return None
            _cache[key] = found
    return found


def model_hash(source: str) -> str | None:
    """A1111's short model hash of ``source`` when it is one file, else None."""
    path = Path(source)
    if path.suffix != ".safetensors" or not path.is_file():  # single-file checkpoints are safetensors only
        return None
    full = _cached(path, "sha256")
    return None if full is None else full[:10]


def lora_hash(path: Path) -> str | None:
    """A1111's short LoRA hash (addnet, 12 hex digits) of a ``.safetensors`` file; None if unreadable."""
    full = _cached(path, "addnet")
    return None if full is None else full[:12]
