"""The files behind an image reach its infotext on the real worker path (generate_batch ->
encode_image): the LoRA's A1111 hash, and for SDXL with a refiner the refiner's name and
handoff, so that the PNG's metadata re-makes the refined image rather than the plain one."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from PIL import Image

from core.schemas import LoraWeight
from tests.support.engine import payload
from tests.support.lora import make_lora
from tests.support.sdxl import sdxl_payload, sdxl_settings
from worker.pipelines.engine import Engine
from worker.runtime.encoding import encode_image
from worker.runtime.execute import generate_batch


def infotext(engine: Engine, job: object) -> tuple[str, dict]:
    (generated,) = generate_batch(engine, [job])  # type: ignore[list-item]
    assert generated.images is not None, generated.error
    picture = Image.fromarray((generated.images[0] * 255).round().astype("uint8"))
    png = Image.open(io.BytesIO(encode_image(picture, generated.payload, 0, 1, engine.spec.id, generated.provenance)))
    text = png.text  # type: ignore[attr-defined]
    return text["parameters"], json.loads(text["sfumato"])


def test_the_lora_hash_is_the_a1111_addnet_hash_of_its_file(engine: Engine, data_dir: Path) -> None:
    path = make_lora(data_dir / "loras", "prov-ink", seed=31)
    raw = path.read_bytes()
    expected = hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little") :]).hexdigest()[:12]
    text, meta = infotext(engine, payload(loras=(LoraWeight(name="prov-ink", scale=0.5),)))
    assert f"Lora hashes: prov-ink: {expected}" in text or f'Lora hashes: "prov-ink: {expected}"' in text
    assert meta["lora_hashes"] == {"prov-ink": expected}
    assert "Model hash" not in text and meta["model_hash"] is None  # the tiny model is a folder


def test_a_refined_sdxl_image_names_its_refiner_and_switch(data_dir: Path) -> None:
    xl = Engine.load(sdxl_settings(data_dir))
    plain, _ = infotext(xl, sdxl_payload(prompt="a lighthouse", seed=3, steps=10))
    refined, meta = infotext(xl, sdxl_payload(prompt="a lighthouse", seed=3, steps=10, switch_at=0.8))
    assert "Refiner" not in plain
    assert xl.spec.refiner is not None
    name = Path(xl.spec.refiner).name
    assert f"Refiner: {name}" in refined and "Refiner switch at: 0.8" in refined
    assert meta["refiner"] == {"model": name, "hash": None, "switch_at": 0.8}
