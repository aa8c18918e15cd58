"""An image is the same whether it ran alone or co-batched (every scheduler, txt2img and
img2img), exact requests are bit-identical, and an out-of-memory batch splits and recovers.

Thresholds (from the batching issue): float32 max |diff| <= 1e-5, and 8-bit pixels differ by
at most one level in at most 0.1% of values. Under ``make test-compiled`` the float bound is
2e-5 (channels_last weights; ``tests/support/engine.py`` says why).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pytest
import torch

from core.scheduler_names import SCHEDULER_DISPLAY_NAMES
from core.schemas import JobPayload
from tests.support.engine import float_bound, noise_image, payload
from worker.pipelines.engine import Engine
from worker.runtime.execute import generate_batch

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def to_8bit(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().clip(0, 255).astype(np.int16)


def assert_same_images(alone: np.ndarray, batched: np.ndarray, float_limit: float | None = None) -> None:
    """Within the batching bounds; ``float_limit`` replaces the float one (compiled engines'
    channels_last weights, :data:`tests.support.engine.COMPILED_FLOAT_BOUND`)."""
    assert alone.shape == batched.shape
    assert float(np.abs(alone - batched).max()) <= (float_bound() if float_limit is None else float_limit)
    levels = np.abs(to_8bit(alone) - to_8bit(batched))
    assert int(levels.max()) <= 1
    assert float((levels > 0).mean()) <= 0.001


def neighbours(mode: str, **common: Any) -> tuple[JobPayload, JobPayload]:
    extra: dict[str, Any] = {"image_b64": noise_image(5)} if mode == "img2img" else {}
    first = payload(job_id="n1", mode=mode, prompt="a castle on a hill", negative_prompt="fog", seed=901, **common)
    second = payload(job_id="n2", mode=mode, prompt="", seed=7, n=3, **extra, **common)
    return first, second


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
@pytest.mark.parametrize("scheduler", sorted(SCHEDULER_DISPLAY_NAMES))
def test_images_do_not_change_when_co_batched(engine: Engine, scheduler: str, mode: str) -> None:
    common: dict[str, Any] = {"scheduler": scheduler, "steps": 4}
    target = payload(job_id="t", mode=mode, prompt="a red fox", negative_prompt="blurry", seed=11, n=2, **common)
    first, second = neighbours(mode, **common)
    (alone,) = engine.generate_arrays([target])
    in_middle = engine.generate_arrays([first, target, second])[1]
    at_front = engine.generate_arrays([target, second])[0]
    at_back = engine.generate_arrays([second, first, target])[2]
    for batched in (in_middle, at_front, at_back):
        assert_same_images(alone, batched)
    # The partners are untouched too.
    assert_same_images(engine.generate_arrays([second])[0], engine.generate_arrays([first, target, second])[2])


def test_exact_requests_are_bit_identical_across_runs(engine: Engine) -> None:
    exact = payload(exact=True, scheduler="euler_a", n=2, steps=5)
    runs = [engine.generate_arrays([exact])[0] for _ in range(3)]
    assert all(np.array_equal(runs[0], run) for run in runs[1:])


def test_repeated_prompts_hit_the_text_encoder_cache(engine: Engine) -> None:
    jobs = [payload(prompt="cache me", n=3), payload(job_id="j2", prompt="cache me")]
    misses = engine.prompt_cache.misses
    first = engine.generate_arrays(jobs)
    assert engine.prompt_cache.misses - misses <= 2  # 4 images, at most "cache me" and "" encoded
    hits, misses = engine.prompt_cache.hits, engine.prompt_cache.misses
    second = engine.generate_arrays(jobs)
    assert engine.prompt_cache.misses == misses and engine.prompt_cache.hits - hits == 2
    assert np.array_equal(first[0], second[0])


class UnetFaults:
    """Fault injection around the real UNet: raise a device OOM above a batch size."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch, max_images: int) -> None:
        unet = engine._components["unet"]
        self.calls: list[int] = []
        real_forward = unet.forward

        self.held: list[weakref.ref[torch.Tensor]] = []
        self.held_at_call: list[int] = []  # failed attempts' activations still alive at each call

        def forward(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            images = sample.shape[0] // 2  # classifier-free guidance doubles the batch
            self.calls.append(images)
            self.held_at_call.append(sum(ref() is not None for ref in self.held))
            if images > max_images:
                activations = torch.empty(images, 1024)  # what a real failed forward leaves behind
                self.held.append(weakref.ref(activations))
                raise torch.OutOfMemoryError(f"CUDA out of memory (injected, {images} images)")
            return real_forward(sample, *args, **kwargs)

        monkeypatch.setattr(unet, "forward", forward)


def test_out_of_memory_splits_the_batch_and_every_image_is_unchanged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [payload(job_id="a", seed=1), payload(job_id="b", seed=2, n=3), payload(job_id="c", seed=3)]
    expected = [engine.generate_arrays([job])[0] for job in jobs]
    faults = UnetFaults(engine, monkeypatch, max_images=1)
    generated = generate_batch(engine, jobs)
    assert [g.error for g in generated] == [None, None, None]
    for want, got in zip(expected, generated, strict=True):
        assert got.images is not None
        assert_same_images(want, got.images)
    assert max(faults.calls) == 5 and 1 in faults.calls  # tried whole, ended one image at a time


def test_a_failed_attempt_frees_its_memory_before_the_smaller_retry(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OOM's traceback holds the failed call's frames; kept alive (chained or still being
    handled) during the retry, its activations would make every half run out of memory too."""
    faults = UnetFaults(engine, monkeypatch, max_images=1)
    generated = generate_batch(engine, [payload(job_id="a", seed=1), payload(job_id="b", seed=2, n=3)])
    assert [g.error for g in generated] == [None, None]
    assert len(faults.held) >= 2  # several attempts failed...
    assert faults.held_at_call == [0] * len(faults.calls)  # ...and none outlived its own attempt


def test_an_image_that_never_fits_fails_only_as_out_of_memory_and_the_engine_recovers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        UnetFaults(engine, patch, max_images=0)
        generated = generate_batch(engine, [payload(job_id="a"), payload(job_id="b", n=2)])
        assert [g.error["code"] if g.error else None for g in generated] == ["out_of_memory"] * 2
    (after,) = generate_batch(engine, [payload(job_id="c")])
    assert after.error is None and after.images is not None


def test_a_broken_upload_fails_only_its_own_job(engine: Engine) -> None:
    good = payload(job_id="good", mode="img2img")
    broken = payload(job_id="broken", mode="img2img", image_b64=noise_image(1)[:120])
    generated = generate_batch(engine, [good, broken])
    assert generated[0].error is None
    assert generated[1].error is not None and generated[1].error["param"] == "image"
