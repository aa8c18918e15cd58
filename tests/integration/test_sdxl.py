"""SDXL on the engine (tiny SDXL + tiny refiner on CPU, float32): both text encoders with
pooled embeddings, size/crop conditioning as diffusers' own call, batch invariance with and
without the refiner, and a refiner that shares text_encoder_2 and the VAE with the base."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint import (
    StableDiffusionXLInpaintPipeline,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from core.batch_key import BatchKey
from core.errors import GenerationFailed
from tests.integration.test_batch_invariance import assert_same_images
from tests.support.engine import noise_image
from tests.support.sdxl import sdxl_payload, sdxl_settings
from worker.builtin.tiny_sdxl import ensure_tiny_sdxl_refiner
from worker.pipelines import sdxl
from worker.pipelines.engine import Engine

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def xl(data_dir: Path) -> Engine:
    eng = Engine.load(sdxl_settings(data_dir))
    eng.warmup()  # also loads the refiner
    return eng


def _refiner(engine: Engine) -> tuple[Any, sdxl.Refiner, Any]:
    """(base txt2img pipeline, the loaded refiner, its pipeline) as the engine builds them."""
    assert engine.refiners is not None and engine.spec.refiner is not None
    base = engine.pipeline("txt2img", "ddim")
    config = dict(base.scheduler.config)
    refiner = engine.refiners.get(engine.spec.refiner, base.components, config)
    return base, refiner, refiner.pipeline(base.components, "ddim", config)


def test_the_engine_serves_sdxl_pipelines_around_one_set_of_modules(xl: Engine) -> None:
    pipes = {mode: xl.pipeline(mode, "euler_a") for mode in ("txt2img", "img2img", "inpaint")}
    assert isinstance(pipes["txt2img"], StableDiffusionXLPipeline)
    assert isinstance(pipes["img2img"], StableDiffusionXLImg2ImgPipeline)
    assert isinstance(pipes["inpaint"], StableDiffusionXLInpaintPipeline)
    base = pipes["txt2img"]
    assert type(base.text_encoder) is CLIPTextModel and type(base.text_encoder_2) is CLIPTextModelWithProjection
    for pipe in pipes.values():
        for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            assert getattr(pipe, name) is getattr(base, name)
    assert pipes["img2img"].scheduler is not base.scheduler  # a fresh scheduler per call
    assert base.watermark is None


@pytest.mark.parametrize(("width", "height", "negative", "clip_skip"), [(64, 64, "", 0), (96, 64, "blurry", 1)])
def test_txt2img_is_diffusers_own_sdxl_call(xl: Engine, width: int, height: int, negative: str, clip_skip: int) -> None:
    """Same pixels as StableDiffusionXLPipeline called with the prompt strings: both encoders,
    pooled embeddings, size/crop conditioning of the request size, zeros for no negative."""
    job = sdxl_payload(prompt="a red fox", negative_prompt=negative, seed=5, n=2, width=width, height=height,
                       clip_skip=clip_skip, scheduler="euler_a")  # fmt: skip
    (ours,) = xl.generate_arrays([job])
    pipe = xl.pipeline("txt2img", "euler_a")
    with torch.inference_mode():
        theirs = pipe(
            prompt=[job.prompt] * 2,
            negative_prompt=[negative] * 2 if negative else None,
            generator=[torch.Generator().manual_seed(seed) for seed in job.seeds],
            num_inference_steps=job.steps,
            guidance_scale=job.guidance_scale,
            height=height,
            width=width,
            clip_skip=clip_skip or None,
            output_type="np",
        ).images
    assert ours.shape == (2, height, width, 3)
    assert_same_images(theirs, ours)  # float rounding only (measured: <= 2e-6)


def test_txt2img_is_deterministic_and_the_seed_matters(xl: Engine) -> None:
    job = sdxl_payload(prompt="a lighthouse", seed=3)
    (first,) = xl.generate_arrays([job])
    (again,) = xl.generate_arrays([job])
    (other,) = xl.generate_arrays([job.model_copy(update={"seed": 4})])
    assert np.array_equal(first, again)
    assert float(np.abs(first - other).max()) > 0.01


INVARIANCE_CASES = [
    *(
        ("txt2img", scheduler, switch_at)
        for switch_at in (None, 0.7)
        for scheduler in ("ddim", "euler_a", "dpmpp_2m_karras")
    ),
    ("img2img", "euler_a", None),
    ("inpaint", "ddim", None),
]


@pytest.mark.parametrize(("mode", "scheduler", "switch_at"), INVARIANCE_CASES)
def test_sdxl_images_do_not_change_when_co_batched(
    xl: Engine, mode: str, scheduler: str, switch_at: float | None
) -> None:
    common: dict[str, Any] = {"mode": mode, "scheduler": scheduler, "switch_at": switch_at}
    other_image: dict[str, Any] = {"image_b64": noise_image(5)} if mode != "txt2img" else {}
    target = sdxl_payload(job_id="t", prompt="a red fox", negative_prompt="blurry", seed=11, n=2, **common)
    first = sdxl_payload(job_id="n1", prompt="a castle on a hill", negative_prompt="fog", seed=901, **common)
    second = sdxl_payload(job_id="n2", prompt="", seed=7, n=3, **other_image, **common)
    (alone,) = xl.generate_arrays([target])
    assert alone.shape == (2, 64, 64, 3)
    assert_same_images(alone, xl.generate_arrays([first, target, second])[1])
    assert_same_images(alone, xl.generate_arrays([target, second])[0])
    assert_same_images(alone, xl.generate_arrays([second, first, target])[2])
    assert_same_images(xl.generate_arrays([second])[0], xl.generate_arrays([first, target, second])[2])


def test_the_refiner_changes_the_image_deterministically(xl: Engine) -> None:
    job = sdxl_payload(prompt="a lighthouse at dusk", seed=21, steps=10)
    (base,) = xl.generate_arrays([job])
    refined_job = sdxl_payload(prompt="a lighthouse at dusk", seed=21, steps=10, switch_at=0.8)
    (refined,) = xl.generate_arrays([refined_job])
    (again,) = xl.generate_arrays([refined_job])
    (later,) = xl.generate_arrays([sdxl_payload(prompt="a lighthouse at dusk", seed=21, steps=10, switch_at=0.5)])
    assert np.array_equal(refined, again)
    assert float(np.abs(refined - base).max()) > 0.005
    assert float(np.abs(refined - later).max()) > 0.005  # where the handoff happens matters
    assert BatchKey.of(job) != BatchKey.of(refined_job)
    # And the base model is untouched afterwards.
    assert np.array_equal(xl.generate_arrays([job])[0], base)


def test_the_refiner_shares_text_encoder_2_and_the_vae_with_the_base(xl: Engine, data_dir: Path) -> None:
    base, _, refiner = _refiner(xl)
    assert refiner.text_encoder_2 is base.text_encoder_2 and refiner.tokenizer_2 is base.tokenizer_2
    assert refiner.vae is base.vae
    assert refiner.unet is not base.unet and refiner.text_encoder is None
    assert refiner.config.requires_aesthetics_score and not refiner.config.force_zeros_for_empty_prompt
    _, _, again = _refiner(xl)
    assert again.unet is refiner.unet  # loaded once
    # Nothing shared is stored (or could be loaded twice): the refiner folder is its UNet only.
    folder = ensure_tiny_sdxl_refiner(data_dir)
    assert sorted(p.name for p in folder.iterdir()) == ["model_index.json", "scheduler", "unet"]
    # Parameters resident in total: the base's plus the refiner's UNet, nothing else.
    resident = {id(p) for m in (base.unet, base.vae, base.text_encoder, base.text_encoder_2) for p in m.parameters()}
    with_refiner = resident | {id(p) for m in (refiner.vae, refiner.text_encoder_2) for p in m.parameters()}
    assert with_refiner == resident


def test_the_refiner_prompts_are_its_own_encoder_outputs(xl: Engine) -> None:
    """The refiner's embeddings are sliced from the cached base encodings; they equal what the
    refiner pipeline computes itself from the strings (text_encoder_2 only, '' not zeroed)."""
    base, refiner, refiner_pipe = _refiner(xl)
    job = sdxl_payload(prompt="a cat in the sky", negative_prompt="", switch_at=0.8)
    ours = sdxl.refiner_prompt_arguments(
        xl.prompt_cache, base, refiner, [job.prompt, "a dog"], ["", "blue"], BatchKey.of(job)
    )
    with torch.inference_mode():
        embeds, negative, pooled, negative_pooled = refiner_pipe.encode_prompt(
            prompt=[job.prompt, "a dog"], negative_prompt=["", "blue"], device=torch.device("cpu")
        )
    assert torch.equal(ours["prompt_embeds"], embeds) and torch.equal(ours["negative_prompt_embeds"], negative)
    # The pooled projection is one matmul over the batch: rows cached from batches of another
    # size round differently (measured: <= 4e-7), far inside the 1e-5 image bound.
    assert torch.allclose(ours["pooled_prompt_embeds"], pooled, rtol=0, atol=1e-6)
    assert torch.allclose(ours["negative_pooled_prompt_embeds"], negative_pooled, rtol=0, atol=1e-6)
    assert float(ours["negative_prompt_embeds"][0].abs().max()) > 0  # not zeros: the refiner encodes ''


def test_refined_progress_counts_both_phases(xl: Engine) -> None:
    steps: list[tuple[int, int]] = []
    xl.generate_arrays([sdxl_payload(steps=10, switch_at=0.8)], on_step=lambda done, total: steps.append((done, total)))
    assert [done for done, _ in steps] == list(range(1, 11))
    assert steps[-1] == (10, 10)


@pytest.fixture
def without_refiner(xl: Engine) -> Iterator[Engine]:
    spec = xl.spec
    xl.spec = dataclasses.replace(spec, refiner=None)
    try:
        yield xl
    finally:
        xl.spec = spec


def test_a_refiner_batch_on_an_engine_without_a_refiner_fails_naming_the_field(
    without_refiner: Engine, engine: Engine
) -> None:
    with pytest.raises(GenerationFailed) as info:
        without_refiner.generate_arrays([sdxl_payload(switch_at=0.8)])
    assert info.value.param == "refiner"
    with pytest.raises(GenerationFailed):  # the SD 1.x tiny engine has none either
        engine.generate_arrays([sdxl_payload(switch_at=0.8, model="tiny", guidance_scale=7.5)])
