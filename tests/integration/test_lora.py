"""LoRA per request on the real engine (tiny model, real diffusers + peft, CPU, float32).

LoRAs are made in the tests with peft (tests/support/lora.py): ``style-a`` adapts the UNet,
``style-b.v1`` the UNet and the text encoder (so the prompt cache must key on it). Most tests
share the session engine on purpose: whatever LoRAs earlier tests left loaded, the base model's
output must not change.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from core.batch_key import BatchKey
from core.config import Settings
from core.schemas import JobPayload, LoraWeight
from tests.conftest import SettingsFactory
from tests.integration.test_batch_claim import payload as queue_payload
from tests.integration.test_batch_claim import setup as queue_setup
from tests.integration.test_batch_invariance import assert_same_images
from tests.support.engine import engine_settings, payload
from tests.support.lora import make_lora
from worker.pipelines.engine import Engine
from worker.runtime.encoding import encode_image
from worker.runtime.execute import generate_batch

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword",
    "ignore:Already found a `peft_config` attribute",
)

A, B = "style-a", "style-b.v1"


@pytest.fixture(scope="session")
def lora_dir(data_dir: Path) -> Path:
    """The session engine's LoRA folder (data_dir/loras), with A (UNet) and B (UNet + text)."""
    folder = data_dir / "loras"
    make_lora(folder, A, seed=1)
    make_lora(folder, B, seed=2, text_encoder=True)
    return folder


def with_loras(*loras: tuple[str, float], **fields: Any) -> JobPayload:
    return payload(loras=tuple(LoraWeight(name=n, scale=s) for n, s in sorted(loras)), **fields)


def fresh_engine(data_dir: Path, **overrides: Any) -> Engine:
    return Engine.load(engine_settings(data_dir, **overrides))


def image(engine: Engine, job: JobPayload) -> np.ndarray:
    return engine.generate_arrays([job])[0]


def assert_differs(a: np.ndarray, b: np.ndarray) -> None:
    assert float(np.abs(a - b).max()) > 1e-3


def test_scale_zero_is_the_base_model_and_scale_one_changes_the_image(engine: Engine, lora_dir: Path) -> None:
    base = image(engine, payload())
    # Straight to the engine: the API would drop a scale-0 LoRA, here the adapter really runs at 0.
    for name in (A, B):
        assert float(np.abs(image(engine, with_loras((name, 0.0))) - base).max()) <= 1e-5
        at_one = image(engine, with_loras((name, 1.0)))
        assert_differs(at_one, base)
        assert np.array_equal(at_one, image(engine, with_loras((name, 1.0))))  # deterministic
    assert_differs(image(engine, with_loras((A, 0.5))), image(engine, with_loras((A, 1.0))))
    assert np.array_equal(image(engine, payload()), base)  # nothing left active


def test_two_loras_at_once_differ_from_each_alone(engine: Engine, lora_dir: Path) -> None:
    both = image(engine, with_loras((A, 0.8), (B, 0.6)))
    for alone in (with_loras((A, 0.8)), with_loras((B, 0.6)), payload()):
        assert_differs(both, image(engine, alone))
    assert np.array_equal(both, image(engine, with_loras((B, 0.6), (A, 0.8))))


def test_alternating_requests_give_the_images_of_solo_runs(engine: Engine, data_dir: Path, lora_dir: Path) -> None:
    """A, base, B, A, base on one engine equals each request on a fresh engine (cold caches)."""
    requests = {
        "A": with_loras((A, 1.0)),
        "base": payload(),
        "B": with_loras((B, 0.7)),
        "AB": with_loras((A, 1), (B, 1)),
    }
    solo = {label: image(fresh_engine(data_dir), job) for label, job in requests.items()}
    for label in ["A", "base", "B", "A", "base", "AB", "B", "base"]:
        assert_same_images(solo[label][None], image(engine, requests[label])[None])


def test_text_encoder_lora_never_reuses_base_prompt_embeddings(engine: Engine, data_dir: Path, lora_dir: Path) -> None:
    prompt = {"prompt": "a prompt only this test uses", "negative_prompt": "and its own negative"}
    engine.generate_arrays([payload(**prompt)])  # warm the cache with base embeddings
    warm = image(engine, with_loras((B, 1.0), **prompt))
    cold = image(fresh_engine(data_dir), with_loras((B, 1.0), **prompt))
    assert_same_images(cold[None], warm[None])
    # The same text under the text-encoder LoRA at another scale is another cache entry.
    assert_differs(image(engine, with_loras((B, 0.3), **prompt)), warm)


@pytest.mark.parametrize("loras", [((A, 1.0),), ((A, 0.5), (B, 1.2))])
def test_images_do_not_change_when_co_batched_with_the_same_loras(
    engine: Engine, lora_dir: Path, loras: tuple[tuple[str, float], ...]
) -> None:
    common: dict[str, Any] = {"scheduler": "euler_a", "steps": 4}
    target = with_loras(*loras, job_id="t", prompt="a red fox", negative_prompt="blurry", seed=11, n=2, **common)
    first = with_loras(*loras, job_id="n1", prompt="a castle", seed=901, **common)
    second = with_loras(*loras, job_id="n2", prompt="", seed=7, n=3, **common)
    alone = engine.generate_arrays([target])[0]
    for batch, index in (([first, target, second], 1), ([target, second], 0), ([second, first, target], 2)):
        assert_same_images(alone, engine.generate_arrays(batch)[index])
    exact = target.model_copy(update={"exact": True})
    runs = [engine.generate_arrays([exact])[0] for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])


def test_jobs_with_different_lora_sets_never_share_a_pipeline_call(engine: Engine, lora_dir: Path) -> None:
    keys = {
        BatchKey.of(job)
        for job in (
            payload(),
            with_loras((A, 1.0)),
            with_loras((A, 0.5)),
            with_loras((B, 1.0)),
            with_loras((A, 1), (B, 1)),
        )
    }
    assert len(keys) == 5 and len({key.digest() for key in keys}) == 5
    with pytest.raises(ValueError, match="batch keys differ"):
        engine.generate_arrays([with_loras((A, 1.0), job_id="x"), with_loras((B, 1.0), job_id="y")])


def test_partner_claiming_on_redis_keeps_lora_sets_apart(
    make_settings: SettingsFactory, clean_redis: redis.Redis
) -> None:
    def job(*loras: tuple[str, float], **changes: Any) -> JobPayload:
        return queue_payload(loras=tuple(LoraWeight(name=n, scale=s) for n, s in loras), **changes)

    leader, base, other_scale, other_lora, partner = (
        job((A, 1.0)),
        job(),
        job((A, 0.5)),
        job((B, 1.0)),
        job((A, 1.0), prompt="a partner"),
    )
    settings: Settings = make_settings()
    _, queue, claimer = queue_setup(settings, [leader, base, other_scale, other_lora, partner])
    assert claimer.claim(BatchKey.of(leader).digest(), capacity=8) == [
        (leader.job_id, 1),
        (partner.job_id, 1),
    ]
    assert queue.get_job_ids() == [base.job_id, other_scale.job_id, other_lora.job_id]


def test_a_cache_of_one_evicts_and_alternation_stays_correct(engine: Engine, data_dir: Path, lora_dir: Path) -> None:
    expected = {name: image(engine, with_loras((name, 1.0))) for name in (A, B)}
    expected["base"] = image(engine, payload())
    small = fresh_engine(data_dir, lora_cache_size=1)
    for label in [A, B, "base", A, B, A, "base"]:
        job = payload() if label == "base" else with_loras((label, 1.0))
        assert_same_images(expected[label][None], image(small, job)[None])
        assert len(small.loras.loaded) <= 1
    assert small.loras.evictions >= 3 and small.loras.loads >= 4
    # A set larger than the cache still runs (loaded together), then shrinks back.
    assert_differs(image(small, with_loras((A, 1), (B, 1))), expected[A])
    assert len(small.loras.loaded) == 2
    assert_same_images(expected["base"][None], image(small, payload())[None])
    image(small, with_loras((A, 1.0)))
    assert [entry.name for entry in small.loras.loaded] == [A]


def test_a_byte_budget_evicts_and_refuses_a_lora_larger_than_itself(
    engine: Engine, data_dir: Path, lora_dir: Path
) -> None:
    reference = image(engine, with_loras((B, 1.0)))
    sizes = {entry.name: entry.nbytes for entry in engine.loras.loaded}
    assert sizes[A] < sizes[B] < sizes[A] + sizes[B]
    tight = fresh_engine(data_dir, lora_cache_bytes=sizes[B])  # room for either, not both
    for name in (A, B, A, B):
        image(tight, with_loras((name, 1.0)))
        assert [entry.name for entry in tight.loras.loaded] == [name]
    assert_same_images(reference[None], image(tight, with_loras((B, 1.0)))[None])
    too_small = fresh_engine(data_dir, lora_cache_bytes=sizes[A])
    (refused,) = generate_batch(too_small, [with_loras((B, 1.0))])
    assert refused.error is not None and "SFUMATO_LORA_CACHE_BYTES" in refused.error["message"]
    assert [entry.name for entry in too_small.loras.loaded] == []
    image(too_small, with_loras((A, 1.0)))
    assert [entry.name for entry in too_small.loras.loaded] == [A]


def test_a_missing_or_broken_lora_fails_its_jobs_and_the_engine_goes_on(
    engine: Engine, data_dir: Path, lora_dir: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"not.a.lora": torch.zeros(2, 2)}, str(lora_dir / "broken.safetensors"))
    base = image(engine, payload())
    for name, words in (("absent", "not available"), ("broken", "matches no layer")):
        (generated,) = generate_batch(engine, [with_loras((name, 1.0))])
        assert generated.error is not None and generated.error["param"] == "loras"
        assert words in generated.error["message"]
    assert np.array_equal(image(engine, payload()), base)
    # Neither failed LoRA was kept (other tests share this engine and may have loaded theirs).
    assert not {entry.name for entry in engine.loras.loaded} & {"absent", "broken"}
    (lora_dir / "broken.safetensors").unlink()


def test_a_replaced_file_is_reloaded(engine: Engine, data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    make_lora(folder, "swap", seed=5)
    local = fresh_engine(data_dir, lora_dir=folder)
    first = image(local, with_loras(("swap", 1.0)))
    make_lora(tmp_path / "staging", "swap", seed=6)
    (tmp_path / "staging" / "swap.safetensors").replace(folder / "swap.safetensors")
    second = image(local, with_loras(("swap", 1.0)))
    assert_differs(first, second)
    assert len(local.loras.loaded) == 1  # the old weights were dropped, not kept beside


def test_png_parameters_carry_the_loras_as_a1111_tags(engine: Engine, lora_dir: Path) -> None:
    job = with_loras((A, 0.75), (B, -1.0), prompt="a fox", steps=1)
    (picture,) = engine.generate([job])[0]
    png = Image.open(io.BytesIO(encode_image(picture, job, index=0, seed=job.seed, model_name="tiny")))
    text = png.text  # type: ignore[attr-defined]
    assert text["parameters"].startswith(f"a fox <lora:{A}:0.75> <lora:{B}:-1>\n")
    assert json.loads(text["sfumato"])["loras"] == [{"name": A, "scale": 0.75}, {"name": B, "scale": -1.0}]
