"""The infotext entries A1111 writes so that an image's resources can be found and the image
re-made: ``Model hash``, ``Lora hashes``, ``Refiner`` / ``Refiner switch at`` (and the same facts
in the ``sfumato`` chunk), with A1111's short hashes computed once per file."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

from PIL import Image

from core.schemas import JobPayload, LoraWeight, RefinerSettings
from worker.runtime.encoding import Provenance, encode_image, parameters_text
from worker.runtime.file_hashes import lora_hash, model_hash

BASE = {
    "job_id": "j1",
    "tenant": "t",
    "model": "xl",
    "mode": "txt2img",
    "prompt": "a lighthouse",
    "negative_prompt": "",
    "width": 64,
    "height": 64,
    "steps": 10,
    "guidance_scale": 5.0,
    "scheduler": "ddim",
    "seed": 1,
    "n": 1,
    "clip_skip": 0,
    "output_format": "png",
    "created_at": 0.0,
}


def job(**fields: object) -> JobPayload:
    return JobPayload.model_validate({**BASE, **fields})


def fields_of(text: str) -> list[str]:
    return text.splitlines()[-1].split(", ")


def test_a_refined_image_does_not_read_like_an_unrefined_one() -> None:
    plain = parameters_text(job(), 1, "xl")
    refined_job = job(refiner=RefinerSettings(switch_at=0.8))
    refined = parameters_text(refined_job, 1, "xl", Provenance(refiner="sdxl-refiner", refiner_hash="7440042bbd"))
    assert plain != refined
    assert "Refiner: sdxl-refiner [7440042bbd]" in fields_of(refined)
    assert "Refiner switch at: 0.8" in fields_of(refined)
    assert "Refiner switch at: 0.8" in fields_of(parameters_text(refined_job, 1, "xl"))  # even without names


def test_model_and_lora_hashes_in_a1111_format() -> None:
    loras = (LoraWeight(name="ink", scale=0.8), LoraWeight(name="film", scale=1.0))
    provenance = Provenance(model_hash="6ce0161689", lora_hashes=(("film", "0123456789ab"), ("ink", "ba9876543210")))
    text = parameters_text(job(loras=loras), 1, "dream", provenance)
    fields = fields_of(text)
    assert fields.index("Model hash: 6ce0161689") + 1 == fields.index("Model: dream")  # where A1111 puts it
    assert 'Lora hashes: "film: 0123456789ab, ink: ba9876543210"' in text
    png = Image.open(io.BytesIO(encode_image(Image.new("RGB", (8, 8)), job(loras=loras), 0, 1, "dream", provenance)))
    meta = json.loads(png.text["sfumato"])  # type: ignore[attr-defined]
    assert meta["model_hash"] == "6ce0161689" and meta["lora_hashes"] == {"film": "0123456789ab", "ink": "ba9876543210"}
    assert meta["refiner"] is None
    # Without provenance (a diffusers folder, or an unreadable file) the entries are left out.
    assert "hash" not in parameters_text(job(loras=loras), 1, "dream")


def test_short_hashes_are_a1111s_and_follow_the_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights" * 1000)
    assert model_hash(str(checkpoint)) == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]
    assert model_hash(str(tmp_path)) is None  # a diffusers folder is no single file
    assert model_hash("tiny") is None and model_hash("owner/name") is None  # built-in, hub id
    header = json.dumps({"__metadata__": {"ss_output_name": "ink"}}).encode()
    lora = tmp_path / "ink.safetensors"
    lora.write_bytes(len(header).to_bytes(8, "little") + header + b"tensor bytes")
    # addnet hash: the bytes after the header only, so metadata edits keep the hash.
    assert lora_hash(lora) == hashlib.sha256(b"tensor bytes").hexdigest()[:12]
    lora.write_bytes(len(header).to_bytes(8, "little") + header + b"other bytes!")
    os.utime(lora, ns=(1, 10**18))
    assert lora_hash(lora) == hashlib.sha256(b"other bytes!").hexdigest()[:12]  # re-read when replaced
