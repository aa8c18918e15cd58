"""The shapes model's training recipe runs end to end: a few steps of each stage, saved as a
diffusers folder of safetensors that the real pipeline loads and samples from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from training.shapes.train import (
    MIN_SNR_GAMMA,
    WORDS,
    build_components,
    edges,
    min_snr_weights,
    shapes_scheduler,
    train,
)


def test_every_caption_word_is_one_token() -> None:
    tokenizer = build_components(0)["tokenizer"]
    assert all(len(tokenizer.tokenize(word)) == 1 for word in WORDS)
    assert tokenizer.tokenize("an orange triangle") == ["an</w>", "orange</w>", "triangle</w>"]


def test_a_short_training_run_saves_a_pipeline_that_loads_and_samples(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    record = train(out, seed=0, vae_steps=2, unet_steps=2, batch=4, train_text=False, dataset_size=32)
    assert record["unet_steps"] == 2 and record["latent_scaling_factor"] > 0 and record["weights"] == "float16"
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    assert json.loads((out / "training.json").read_text())["seed"] == 0
    pipe = StableDiffusionPipeline.from_pretrained(
        out, safety_checker=None, requires_safety_checker=False, dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red circle on a blue background", num_inference_steps=2, height=32, width=32,
                  output_type="np").images  # fmt: skip
    assert np.asarray(images).shape == (1, 32, 32, 3)
    assert pipe.unet.config.sample_size == 16 and pipe.vae_scale_factor == 2


def test_a_unet_only_run_reuses_a_trained_vae(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    train(first, seed=0, vae_steps=2, unet_steps=1, batch=4, train_text=False, dataset_size=32)
    record = train(second, seed=1, vae_steps=99, unet_steps=1, batch=4, train_text=True, dataset_size=32,
                   vae_from=first)  # fmt: skip
    assert record["vae_steps"] == 2 and record["train_text_encoder"] and record["vae_from"] == str(first)
    assert [e["stage"] for e in record["log"]].count(0) >= 1  # the reused VAE's losses are kept
    assert (first / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        second / "vae" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()


def test_edges_mark_a_shapes_outline_only() -> None:
    image = torch.full((1, 3, 8, 8), -1.0)
    image[:, :, 2:6, 2:6] = 1.0
    marked = edges(image)[0, 0]
    assert marked[0, 0] == 0 and marked[3, 3] == 0  # flat background and flat interior
    assert marked[2, 2] == 1 and marked[1, 3] == 1  # either side of the outline


def test_min_snr_weights_quiet_only_the_nearly_clean_timesteps() -> None:
    schedule = DDPMScheduler.from_config(shapes_scheduler().config)
    timesteps = torch.arange(0, 1000)
    weights = min_snr_weights(schedule, timesteps)
    alphas = schedule.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    noisy = snr <= MIN_SNR_GAMMA
    assert torch.all(weights[noisy] == 1.0)
    assert torch.allclose(weights[~noisy], MIN_SNR_GAMMA / snr[~noisy])
    assert weights[0] < 0.01 and bool(torch.all(weights[1:] >= weights[:-1]))  # monotone in t
    assert 0.05 < (~noisy).float().mean() < 0.3  # a minority of the steps is quietened
