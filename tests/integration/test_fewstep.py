"""Few-step sampling through the real engine on the built-in tiny models (CPU, float32).

What this proves: LCM and TCD draw valid images that are the same alone or co-batched; they
work in img2img (``strength`` runs the tail of their schedule); guidance at or below 1 skips
the unconditional pass in every pipeline class we call (SD and SDXL, txt2img, img2img,
inpainting) -- counted with a forward hook on the resident UNet: batch rows per call halve and
the number of calls stays; registry few-step defaults serve a bare prompt; a model's registry
``timestep_spacing`` reaches the UNet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.schemas import ImageRequest
from core.validation import normalize_request
from tests.support.batching import BOUND, Case, measure, within
from tests.support.engine import engine_settings, payload
from worker.pipelines.engine import Engine

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

FEW_STEP = ["lcm", "tcd"]


@dataclass
class UnetCalls:
    """What the resident UNet saw: one entry per forward call."""

    rows: list[int] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)

    @property
    def rows_per_call(self) -> set[int]:
        return set(self.rows)


@contextmanager
def unet_calls(engine: Engine) -> Iterator[UnetCalls]:
    """Count the UNet's forward calls and batch rows while the block runs (the hook is removed
    after, so the session's shared engine is left as it was)."""
    unet: torch.nn.Module = engine.pipeline("txt2img", "ddim").unet  # the resident module itself
    seen = UnetCalls()

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _output: Any) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        seen.rows.append(int(sample.shape[0]))
        seen.timesteps.append(round(float(torch.as_tensor(timestep).flatten()[0])))

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def run(engine: Engine, **fields: Any) -> tuple[np.ndarray, UnetCalls]:
    with unet_calls(engine) as seen:
        (images,) = engine.generate_arrays([payload(**fields)])
    return images, seen


def assert_valid(images: np.ndarray, n: int, size: int = 64) -> None:
    assert images.shape == (n, size, size, 3)
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    assert float(images.std()) > 0.01  # a picture, not a flat colour


@pytest.fixture(scope="module")
def sdxl_engine(data_dir: Path) -> Engine:
    return Engine.load(engine_settings(data_dir, model="tiny-sdxl"))


@pytest.mark.parametrize("scheduler", FEW_STEP)
def test_few_step_schedulers_draw_the_same_image_every_time(engine: Engine, scheduler: str) -> None:
    first, seen = run(engine, scheduler=scheduler, steps=4, guidance_scale=1.0, n=2)
    assert_valid(first, 2)
    assert seen.timesteps == [999, 759, 499, 259]  # the LCM/TCD schedule, from pure noise
    again, _ = run(engine, scheduler=scheduler, steps=4, guidance_scale=1.0, n=2)
    assert np.array_equal(first, again)
    assert not np.array_equal(first[0], first[1])  # seed and seed + 1


def test_lcm_images_are_the_same_alone_or_co_batched(engine: Engine) -> None:
    """The documented batching bound (tests/support/batching.py) at few-step settings, without
    guidance: each non-final LCM step draws fresh noise, from each image's own generator.
    (test_batch_invariance.py checks every scheduler, lcm and tcd included, with guidance.)"""
    case = Case("tiny", "lcm", "txt2img", steps=4)
    for row in measure(engine.generate_arrays, case, guidance=1.0):
        assert within(row), f"{row} over {BOUND}"


@pytest.mark.parametrize("scheduler", FEW_STEP)
def test_few_step_img2img_runs_the_tail_of_the_schedule(engine: Engine, scheduler: str) -> None:
    images, seen = run(engine, mode="img2img", scheduler=scheduler, steps=4, strength=0.5, guidance_scale=1.0)
    assert_valid(images, 1)
    assert seen.timesteps == [499, 259]  # int(4 x 0.5) steps, the end of [999, 759, 499, 259]
    stronger, seen = run(engine, mode="img2img", scheduler=scheduler, steps=4, strength=1.0, guidance_scale=1.0)
    assert seen.timesteps == [999, 759, 499, 259] and not np.array_equal(images, stronger)


@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_guidance_at_or_below_one_halves_the_unet_rows(engine: Engine, mode: str) -> None:
    """diffusers skips classifier-free guidance when guidance_scale <= 1, also on our call path,
    which always passes negative_prompt_embeds: n rows per call instead of 2n, same calls."""
    common: dict[str, Any] = {"mode": mode, "scheduler": "lcm", "steps": 4, "n": 2, "negative_prompt": "blurry"}
    _, guided = run(engine, guidance_scale=7.0, **common)
    _, plain = run(engine, guidance_scale=1.0, **common)
    _, below = run(engine, guidance_scale=0.5, **common)
    assert guided.rows_per_call == {4} and plain.rows_per_call == {2} and below.rows_per_call == {2}
    assert len(guided.rows) == len(plain.rows) == len(below.rows) > 0
    assert sum(plain.rows) * 2 == sum(guided.rows)


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_guidance_shortcut_on_sdxl(sdxl_engine: Engine, mode: str) -> None:
    """SDXL concatenates more for guidance (pooled embeddings, size conditioning): all skipped."""
    common: dict[str, Any] = {"model": "tiny-sdxl", "mode": mode, "scheduler": "tcd", "steps": 2, "n": 2}
    guided_images, guided = run(sdxl_engine, guidance_scale=5.0, **common)
    plain_images, plain = run(sdxl_engine, guidance_scale=1.0, **common)
    assert guided.rows_per_call == {4} and plain.rows_per_call == {2}
    assert len(guided.rows) == len(plain.rows) > 0
    assert_valid(plain_images, 2)
    assert not np.array_equal(guided_images, plain_images)


def test_few_step_registry_defaults_serve_a_bare_prompt(tmp_path: Path) -> None:
    """A registry model whose defaults are LCM, 4 steps, guidance 1: the worker warms up with
    them, and a request with only a prompt runs 4 UNet calls of one row per image."""
    registry = tmp_path / "models.toml"
    registry.write_text(
        '[[models]]\nid = "fast"\nsource = "tiny"\nfamily = "tiny"\n'
        'default_scheduler = "LCM"\ndefault_steps = 4\ndefault_guidance = 1.0\n'
    )
    settings = engine_settings(tmp_path / "data", models_file=registry)
    engine = Engine.load(settings)
    engine.warmup()  # 1 step at the model's defaults
    request = ImageRequest.model_validate({"prompt": "a lighthouse", "n": 2})
    job = normalize_request(request, settings, tenant="t", job_id="j", now=0.0)
    assert (job.scheduler, job.steps, job.guidance_scale) == ("lcm", 4, 1.0)
    with unet_calls(engine) as seen:
        (images,) = engine.generate_arrays([job])
    assert_valid(images, 2)
    assert seen.rows == [2, 2, 2, 2] and seen.timesteps == [999, 759, 499, 259]


def test_registry_timestep_spacing_reaches_the_unet(tmp_path: Path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text('[[models]]\nid = "turbo"\nsource = "tiny"\nfamily = "tiny"\ntimestep_spacing = "trailing"\n')
    engine = Engine.load(engine_settings(tmp_path / "data", models_file=registry))
    _, seen = run(engine, model="turbo", scheduler="ddim", steps=4)
    assert seen.timesteps == [999, 749, 499, 249]  # trailing; the tiny model's own (leading): 751, 501, 251, 1
    _, seen = run(engine, model="turbo", scheduler="euler", steps=4)
    assert seen.timesteps == [999, 749, 499, 249]
