"""The shapes model's training recipe runs end to end: a few steps of each stage, saved as a
diffusers folder of safetensors that the real pipeline loads and samples from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

from worker.shapes.train import WORDS, build_components, train


def test_every_caption_word_is_one_token() -> None:
    tokenizer = build_components(0)["tokenizer"]
    assert all(len(tokenizer.tokenize(word)) == 1 for word in WORDS)
    assert tokenizer.tokenize("an orange triangle") == ["an</w>", "orange</w>", "triangle</w>"]


def test_a_short_training_run_saves_a_pipeline_that_loads_and_samples(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    record = train(out, seed=0, vae_steps=2, unet_steps=2, batch=4, train_text=False)
    assert record["unet_steps"] == 2 and record["latent_scaling_factor"] > 0
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    assert json.loads((out / "training.json").read_text())["seed"] == 0
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red circle on a blue background", num_inference_steps=2, height=32, width=32,
                  output_type="np").images  # fmt: skip
    assert np.asarray(images).shape == (1, 32, 32, 3)
