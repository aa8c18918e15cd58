"""The shipped SD 1.x configs and CLIP vocabulary, proven on SD 1.5's real architecture: a
pipeline of SD 1.5's shapes (random weights, bf16, as bench/ uses) written as one original-layout
file loads offline with no ``config`` key into the same modules and the same image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from bench.sd15_random import build_sd15_random
from core.models import ModelSpec
from tests.support.single_file import write_single_file
from worker.pipelines.checkpoints import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_an_sd15_architecture_checkpoint_loads_with_the_shipped_configs(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        original = build_sd15_random()
    file = write_single_file(original, tmp_path / "sd15-random.safetensors")
    spec = ModelSpec(
        id="sd15", source=str(file), family="sd1", default_width=512, default_height=512, max_size=1024,
        default_steps=20, default_scheduler="ddim", default_guidance=7.0,
    )  # fmt: skip
    loaded = load_checkpoint(spec, torch.bfloat16)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert loaded.scheduler.config.prediction_type == "epsilon"
    assert loaded.vae.config.scaling_factor == original.vae.config.scaling_factor
    # The real CLIP ViT-L/14 vocabulary ships once: "a photo of a cat" as CLIP tokenizes it.
    assert loaded.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # Same sampler for both: SD 1.5's shipped scheduler config names PNDM, the random build's DDIM.
    for pipe in (original, loaded):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        embeds = original.text_encoder(torch.tensor([[49406, 320, 2368, 49407] + [49407] * 73]))[0]
    images = [
        pipe(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), height=64, width=64,
             num_inference_steps=1, generator=torch.Generator().manual_seed(1), output_type="np").images
        for pipe in (original, loaded)
    ]  # fmt: skip
    assert np.array_equal(images[0], images[1])  # bf16 on CPU is deterministic for the same modules
