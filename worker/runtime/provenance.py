"""Which files made a job's images: the model, its LoRAs and its refiner, with A1111's short
hashes (worker/runtime/file_hashes.py), for the PNG infotext (worker/runtime/encoding.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.loras import SUFFIX
from core.schemas import JobPayload
from worker.runtime.encoding import Provenance
from worker.runtime.file_hashes import lora_hash, model_hash

log = logging.getLogger(__name__)


def _name(source: str) -> str:
    """A model's display name: a file's stem, a folder's or hub id's last part."""
    path = Path(source.rstrip("/"))
    return path.stem if path.suffix == ".safetensors" else path.name


def provenance_of(engine: Any, payload: JobPayload) -> Provenance | None:
    """The :class:`Provenance` of ``payload`` on ``engine``; None (and a log line) if a file
    cannot be read: metadata never fails a job whose images exist."""
    try:
        spec = engine.spec
        folder = getattr(getattr(engine, "loras", None), "folder", None)
        loras: list[tuple[str, str]] = []
        for lora in payload.loras:
            digest = None if folder is None else lora_hash(Path(folder) / f"{lora.name}{SUFFIX}")
            if digest:
                loras.append((lora.name, digest))
        refiner = spec.refiner if payload.refiner is not None else None
        return Provenance(
            model_hash=model_hash(spec.source),
            lora_hashes=tuple(loras),
            refiner=None if refiner is None else _name(refiner),
            refiner_hash=None if refiner is None else model_hash(refiner),
        )
    except Exception:
        log.exception("could not describe the files behind job %s", payload.job_id)
        return None
