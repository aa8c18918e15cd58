"""ControlNet per request on the real engine (tiny model, real diffusers ControlNet pipelines,
CPU, float32).

Two tiny ControlNets are made in the tests (tests/support/controlnet.py: copied from the tiny
UNet's encoder, zero convolutions filled with seeded noise, saved as safetensors). The session
engine is shared on purpose: whatever ControlNets earlier tests loaded, plain requests must
give the base model's images.

Measured on this CPU (float32): scale 0 gives the image without ControlNet bit for bit (its
residuals are multiplied by 0 and added); co-batched ControlNet images equal solo ones within
the batching thresholds (0.0 here).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from core.batch_key import BatchKey
from core.config import Settings
from core.models import ControlNetSpec
from core.schemas import ControlNetJob, JobPayload, LoraWeight
from tests.conftest import SettingsFactory
from tests.integration.test_batch_claim import payload as queue_payload
from tests.integration.test_batch_claim import setup as queue_setup
from tests.integration.test_batch_invariance import UnetFaults, assert_same_images
from tests.support.controlnet import b64, edge_map, make_controlnet, shapes_image
from tests.support.engine import engine_settings, payload
from tests.support.lora import make_lora
from worker.pipelines.canny import canny_image
from worker.pipelines.engine import Engine
from worker.runtime.encoding import encode_image
from worker.runtime.execute import generate_batch

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword",
    "ignore:Already found a `peft_config` attribute",
)

EDGES, DEPTH = "edges", "depth"


@pytest.fixture(scope="session")
def controlnet_dir(data_dir: Path) -> Path:
    folder = data_dir / "controlnets"
    make_controlnet(folder / EDGES, seed=1)
    make_controlnet(folder / DEPTH, seed=2)
    return folder


def specs(folder: Path) -> tuple[ControlNetSpec, ...]:
    return (ControlNetSpec(EDGES, str(folder / EDGES), "canny"), ControlNetSpec(DEPTH, str(folder / DEPTH)))


@pytest.fixture
def cn_engine(engine: Engine, controlnet_dir: Path) -> Iterator[Engine]:
    """The session engine with the two ControlNets in its model's registry entry."""
    original = engine.spec
    engine.spec = dataclasses.replace(original, controlnets=specs(controlnet_dir))
    try:
        yield engine
    finally:
        engine.spec = original


def unit(name: str = EDGES, image: Image.Image | None = None, **changes: Any) -> ControlNetJob:
    values: dict[str, Any] = {"scale": 1.0, "start": 0.0, "end": 1.0, "preprocess": "none"}
    values.update(changes)
    return ControlNetJob(name=name, image_b64=b64(image if image is not None else edge_map(1)), **values)


def job(*units: ControlNetJob, **fields: Any) -> JobPayload:
    return payload(controlnet=units, **fields)


def image(engine: Engine, payload_: JobPayload) -> np.ndarray:
    return engine.generate_arrays([payload_])[0]


def assert_differs(a: np.ndarray, b: np.ndarray) -> None:
    assert float(np.abs(a - b).max()) > 1e-2


@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_a_controlnet_changes_the_image_deterministically_and_scale_zero_is_the_base(
    cn_engine: Engine, mode: str
) -> None:
    base = image(cn_engine, payload(mode=mode))
    controlled = image(cn_engine, job(unit(), mode=mode))
    assert_differs(controlled, base)
    assert np.array_equal(controlled, image(cn_engine, job(unit(), mode=mode)))  # same request, same pixels
    assert_differs(image(cn_engine, job(unit(image=edge_map(2)), mode=mode)), controlled)  # the image matters
    # Straight to the engine (the API drops scale-0 units): measured bit-identical to no ControlNet.
    assert np.array_equal(image(cn_engine, job(unit(scale=0.0), mode=mode)), base)
    assert np.array_equal(image(cn_engine, payload(mode=mode)), base)  # nothing left attached


def test_scale_and_the_start_end_window_act(cn_engine: Engine) -> None:
    # 6 steps: with 3, a window of only the last step moves pixels by < 1e-3 (measured).
    full = image(cn_engine, job(unit(), steps=6))
    half = image(cn_engine, job(unit(scale=0.5), steps=6))
    late = image(cn_engine, job(unit(start=0.5), steps=6))
    early = image(cn_engine, job(unit(end=0.5), steps=6))
    base = image(cn_engine, payload(steps=6))
    for a, b in [(full, half), (full, late), (full, early), (late, early), (late, base), (early, base)]:
        assert_differs(a, b)


def test_canny_preprocessing_runs_on_the_worker(cn_engine: Engine) -> None:
    photo = shapes_image((96, 80))  # another size: resized to 64 x 64 first, then edges
    preprocessed = image(cn_engine, job(unit(image=photo, preprocess="canny")))
    edges = canny_image(photo.resize((64, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(preprocessed, image(cn_engine, job(unit(image=edges))))
    assert_differs(preprocessed, image(cn_engine, job(unit(image=photo))))  # the photo as a map


def test_two_controlnets_at_once_differ_from_each_alone(cn_engine: Engine) -> None:
    both = image(cn_engine, job(unit(), unit(DEPTH, shapes_image(), scale=0.8)))
    for alone in (job(unit()), job(unit(DEPTH, shapes_image(), scale=0.8)), payload()):
        assert_differs(both, image(cn_engine, alone))
    assert np.array_equal(both, image(cn_engine, job(unit(), unit(DEPTH, shapes_image(), scale=0.8))))
    # The same ControlNet twice, with two maps.
    assert_differs(image(cn_engine, job(unit(), unit(image=edge_map(3)))), image(cn_engine, job(unit())))


@pytest.mark.parametrize(("count", "scheduler"), [(1, "euler_a"), (2, "dpmpp_2m_karras")])
def test_images_do_not_change_when_co_batched_with_other_control_images(
    cn_engine: Engine, scheduler: str, count: int
) -> None:
    """Other images, prompts, seeds and n beside it, at the front, middle and back."""

    def units(seed: int) -> tuple[ControlNetJob, ...]:
        chosen = (unit(image=edge_map(seed), scale=0.9, end=0.8), unit(DEPTH, shapes_image(offset=seed), start=0.2))
        return chosen[:count]

    common: dict[str, Any] = {"scheduler": scheduler, "steps": 4}
    target = job(*units(1), job_id="t", prompt="a red fox", negative_prompt="blurry", seed=11, n=2, **common)
    first = job(*units(2), job_id="n1", prompt="a castle on a hill", seed=901, **common)
    second = job(*units(3), job_id="n2", prompt="", seed=7, n=3, **common)
    alone = cn_engine.generate_arrays([target])[0]
    for batch, index in (([first, target, second], 1), ([target, second], 0), ([second, first, target], 2)):
        assert_same_images(alone, cn_engine.generate_arrays(batch)[index])
    # The partners are unchanged too.
    assert_same_images(cn_engine.generate_arrays([second])[0], cn_engine.generate_arrays([first, target, second])[2])


def test_different_controlnet_settings_never_share_a_pipeline_call(cn_engine: Engine) -> None:
    variants = [
        payload(),
        job(unit()),
        job(unit(scale=0.5)),
        job(unit(start=0.25)),
        job(unit(end=0.75)),
        job(unit(preprocess="canny")),
        job(unit(DEPTH)),
        job(unit(), unit(DEPTH)),
    ]
    assert len({BatchKey.of(v).digest() for v in variants}) == len(variants)
    with pytest.raises(ValueError, match="batch keys differ"):
        cn_engine.generate_arrays([job(unit(), job_id="x"), job(unit(scale=0.5), job_id="y")])


def test_partner_claiming_on_redis_keeps_controlnet_settings_apart(
    make_settings: SettingsFactory, clean_redis: redis.Redis
) -> None:
    def queued(*units: ControlNetJob, **changes: Any) -> JobPayload:
        return queue_payload(controlnet=units, **changes)

    leader, base, other_scale, other_net, partner = (
        queued(unit()),
        queued(),
        queued(unit(scale=0.5)),
        queued(unit(DEPTH)),
        queued(unit(image=edge_map(9)), prompt="a partner with its own control image"),
    )
    settings: Settings = make_settings()
    _, queue, claimer = queue_setup(settings, [leader, base, other_scale, other_net, partner])
    assert claimer.claim(BatchKey.of(leader).digest(), capacity=8) == [(leader.job_id, 1), (partner.job_id, 1)]
    assert queue.get_job_ids() == [base.job_id, other_scale.job_id, other_net.job_id]


def test_controlnets_share_the_resident_modules_and_the_cache_stays_bounded(
    data_dir: Path, controlnet_dir: Path
) -> None:
    small = Engine.load(engine_settings(data_dir, controlnet_cache_size=1))
    small.spec = dataclasses.replace(small.spec, controlnets=specs(controlnet_dir))
    expected = {
        "edges": image(small, job(unit())),
        "depth": image(small, job(unit(DEPTH))),
        "base": image(small, payload()),
    }
    pipe = small._controlnet_pipeline(BatchKey.of(job(unit())))
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(pipe, name) is small._components[name]  # no second copy of the base model
    for label in ["depth", "base", "edges", "depth"]:
        got = image(small, payload() if label == "base" else job(unit(DEPTH if label == "depth" else EDGES)))
        assert_same_images(expected[label], got)
        assert len(small.controlnets.loaded) <= 1
    assert small.controlnets.evictions >= 3  # edges, depth, edges, depth: each evicts the other
    # A batch needing both loads both, then shrinks back on the next.
    image(small, job(unit(), unit(DEPTH)))
    assert len(small.controlnets.loaded) == 2
    image(small, job(unit()))
    assert [name for name, _ in small.controlnets.loaded] == [EDGES]
    loads = small.controlnets.loads
    image(small, job(unit(scale=0.3)))
    assert small.controlnets.loads == loads  # loaded once, kept


def test_bad_control_images_and_unknown_names_fail_only_their_own_jobs(cn_engine: Engine) -> None:
    good = job(unit(), job_id="good")
    broken = ControlNetJob(name=EDGES, image_b64=b64(edge_map(1))[:100], scale=1, start=0, end=1, preprocess="none")
    generated = generate_batch(cn_engine, [good, job(broken, job_id="broken")])
    assert generated[0].error is None
    assert generated[1].error is not None and generated[1].error["param"] == "controlnet[0].image"
    (unknown,) = generate_batch(cn_engine, [job(unit("pose"), job_id="unknown")])
    assert unknown.error is not None and unknown.error["param"] == "controlnet"
    assert "not available on this worker" in unknown.error["message"]
    cn_engine.spec = dataclasses.replace(cn_engine.spec, controlnets=(ControlNetSpec("gone", "/no/such/folder"),))
    (missing,) = generate_batch(cn_engine, [job(unit("gone"), job_id="missing")])
    assert missing.error is not None and "could not load ControlNet 'gone'" in missing.error["message"]


def test_an_out_of_memory_split_keeps_each_image_with_its_control_image(
    cn_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [job(unit(image=edge_map(4)), job_id="a", seed=1), job(unit(image=edge_map(5)), job_id="b", seed=2, n=2)]
    expected = [image(cn_engine, j) for j in jobs]
    faults = UnetFaults(cn_engine, monkeypatch, max_images=1)
    generated = generate_batch(cn_engine, jobs)
    assert [g.error for g in generated] == [None, None]
    for want, got in zip(expected, generated, strict=True):
        assert got.images is not None
        assert_same_images(want, got.images)
    assert max(faults.calls) == 3 and 1 in faults.calls


def test_png_parameters_carry_the_controlnet_settings_but_not_the_image(cn_engine: Engine) -> None:
    payload_ = job(unit(scale=0.75, end=0.8), unit(DEPTH, preprocess="canny"), prompt="a fox", steps=1)
    (picture,) = cn_engine.generate([payload_])[0]
    png = Image.open(io.BytesIO(encode_image(picture, payload_, index=0, seed=payload_.seed, model_name="tiny")))
    text = png.text  # type: ignore[attr-defined]
    assert (
        'ControlNet 0: "Module: none, Model: edges, Weight: 0.75, Guidance Start: 0, Guidance End: 0.8"'
        in (text["parameters"])
    )
    assert 'ControlNet 1: "Module: canny, Model: depth, Weight: 1' in text["parameters"]
    units = json.loads(text["sfumato"])["controlnet"]
    assert [u["name"] for u in units] == [EDGES, DEPTH] and "image_b64" not in units[0]


def test_a_lora_and_a_controlnet_together(data_dir: Path, controlnet_dir: Path, tmp_path: Path) -> None:
    """The ControlNet pipeline is built around the same modules, so LoRA adapters apply to it;
    afterwards plain and ControlNet-only requests give their images as before. (Its own engine
    and LoRA folder: the session engine's loaded LoRAs are other tests' business.)"""
    make_lora(tmp_path / "loras", "cn-style", seed=4)
    local = Engine.load(engine_settings(data_dir, lora_dir=tmp_path / "loras"))
    local.spec = dataclasses.replace(local.spec, controlnets=specs(controlnet_dir))
    lora = (LoraWeight(name="cn-style", scale=1.0),)
    plain, controlled = image(local, payload()), image(local, job(unit()))
    both = image(local, job(unit(), loras=lora))
    for other in (plain, controlled, image(local, payload(loras=lora))):
        assert_differs(both, other)
    assert np.array_equal(both, image(local, job(unit(), loras=lora)))
    assert np.array_equal(image(local, job(unit())), controlled)
    assert np.array_equal(image(local, payload()), plain)
