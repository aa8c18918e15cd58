"""core.batch_key: what may vary inside one batch never changes the key; everything the
pipeline call takes once per batch does."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from core.batch_key import BatchKey
from core.schemas import ControlNetJob, JobPayload, LoraWeight, RefinerSettings

BASE: dict[str, Any] = {
    "job_id": "a" * 32,
    "tenant": "t1",
    "model": "tiny",
    "mode": "img2img",
    "prompt": "a red bicycle",
    "negative_prompt": "blurry",
    "width": 64,
    "height": 64,
    "steps": 20,
    "guidance_scale": 7.5,
    "scheduler": "ddim",
    "seed": 42,
    "n": 1,
    "clip_skip": 0,
    "output_format": "png",
    "strength": 0.75,
    "image_b64": "aW1hZ2U=",
    "mask_b64": None,
    "created_at": 1000.0,
}

#: Per job or per image: prompts, seeds, n, identity, encoding, the init image itself.
PER_JOB: dict[str, Any] = {
    "job_id": "b" * 32,
    "tenant": "t2",
    "prompt": "a blue bicycle",
    "negative_prompt": "",
    "seed": 7,
    "n": 4,
    "output_format": "webp",
    "image_b64": "b3RoZXI=",
    "created_at": 2000.0,
    "deadline_at": 2100.0,
    "preview": True,  # previews are made from the batch's latents per job, after the call
    "priority": "batch",  # which queue a job waits in; batches combine classes (core/priority.py)
    "prompt_as_written": "a blue bicycle <lora:film-grain:0.8>",  # only the PNG infotext reads it
}

#: One value per pipeline call.
BATCH_WIDE: dict[str, Any] = {
    "model": "other-model",
    "mode": "txt2img",
    "width": 128,
    "height": 128,
    "steps": 30,
    "guidance_scale": 5.0,
    "scheduler": "euler_a",
    "clip_skip": 1,
    "strength": 0.5,
    "exact": True,
    "loras": (LoraWeight(name="film-grain", scale=0.8),),
    # The settings are batch-wide; the control images themselves vary per job
    # (tests/unit/test_controlnets.py).
    "controlnet": (
        ControlNetJob(name="canny", image_b64="aW1hZ2U=", scale=1.0, start=0.0, end=1.0, preprocess="none"),
    ),
    "refiner": RefinerSettings(switch_at=0.8),  # SDXL: the handoff point is one per call
}


def payload(**changes: Any) -> JobPayload:
    return JobPayload(**{**BASE, **changes})


def test_every_payload_field_is_classified() -> None:
    # A new JobPayload field must be placed on one side deliberately (mask_b64 rides with the
    # mode: inpaint vs img2img).
    assert set(JobPayload.model_fields) == set(PER_JOB) | set(BATCH_WIDE) | {"mask_b64"}


@pytest.mark.parametrize(("field", "value"), sorted(PER_JOB.items()))
def test_per_job_fields_do_not_change_the_key(field: str, value: Any) -> None:
    assert BatchKey.of(payload(**{field: value})) == BatchKey.of(payload())
    assert BatchKey.of(payload(**{field: value})).digest() == BatchKey.of(payload()).digest()


def test_all_per_job_fields_at_once() -> None:
    assert BatchKey.of(payload(**PER_JOB)) == BatchKey.of(payload())


@pytest.mark.parametrize(("field", "value"), sorted(BATCH_WIDE.items()))
def test_batch_wide_fields_change_the_key(field: str, value: Any) -> None:
    changed = BatchKey.of(payload(**{field: value}))
    assert changed != BatchKey.of(payload())
    assert changed.digest() != BatchKey.of(payload()).digest()


def test_loras_change_the_key() -> None:
    key = BatchKey.of(payload())
    with_lora = dataclasses.replace(key, loras=(("film-grain", 0.8),))
    other_weight = dataclasses.replace(key, loras=(("film-grain", 0.6),))
    assert len({key.digest(), with_lora.digest(), other_weight.digest()}) == 3


def test_the_lora_set_is_wired_from_the_payload_and_its_order_does_not_matter() -> None:
    grain, ink = LoraWeight(name="film-grain", scale=0.8), LoraWeight(name="ink", scale=-0.5)
    key = BatchKey.of(payload(loras=(ink, grain)))
    assert key.loras == (("film-grain", 0.8), ("ink", -0.5))
    assert key == BatchKey.of(payload(loras=(grain, ink)))
    assert key != BatchKey.of(payload(loras=(grain,)))
    assert BatchKey.of(payload(loras=(LoraWeight(name="film-grain", scale=0.6),))) != BatchKey.of(
        payload(loras=(grain,))
    )


def test_a_payload_without_loras_keeps_its_old_digest() -> None:
    # Jobs queued before LoRAs existed (no "loras" in their JSON) still batch with new ones.
    data = payload().model_dump(mode="json")
    data.pop("loras")
    assert BatchKey.of(JobPayload.model_validate(data)) == BatchKey.of(payload())
    assert BatchKey.of(payload()).loras == ()


def test_digest_is_short_stable_hex() -> None:
    digest = BatchKey.of(payload()).digest()
    assert digest == BatchKey.of(payload()).digest()
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert "bicycle" not in digest


def test_key_is_hashable_for_grouping() -> None:
    groups = {BatchKey.of(payload(prompt=p)) for p in ("a", "b", "c")}
    assert len(groups) == 1


def test_batch_tag_carries_the_digest_and_the_image_count() -> None:
    from core.batch_key import batch_tag

    assert batch_tag(payload(n=3)) == f"{BatchKey.of(payload()).digest()}:3"
