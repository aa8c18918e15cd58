"""The shipped SD 1.x configs and CLIP vocabulary, proven on SD 1.5's real architecture: a
pipeline of SD 1.5's shapes (random weights, bf16, as bench/ uses) written as one original-layout
file loads offline with no ``config`` key into the same modules and the same image.

Cost (CI has 2 cores): the architecture comes from ``bench.sd15_random`` but its weights are
filled straight in bf16 (``tests/support/sd15_weights.py``), not through torch's float32
initialisers. "The same image" is checked module by module at batch 1: the text encoder, one
UNet step and the VAE decode each get the same input in both pipelines and must give equal
tensors. That is what a 1-step pipeline call computes, minus the scheduler (forced to the same
DDIM config on both sides, so it could not differ), without classifier-free guidance's second
UNet pass, and it checks the loaded text encoder's own forward too (the pipeline call used the
original's embeddings for both).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers")

import torch

from core.models import ModelSpec
from tests.support.sd15_weights import sd15_random_bf16
from tests.support.single_file import write_single_file
from worker.pipelines.checkpoints import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

#: "<|startoftext|> a cat <|endoftext|>", padded to CLIP's 77 tokens as the pipeline pads.
TOKENS = [49406, 320, 2368, 49407] + [49407] * 73


def forward(pipe, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """What one denoising step and the decode compute: embeddings, the UNet's noise, the image."""
    with torch.no_grad():
        embeds = pipe.text_encoder(torch.tensor([TOKENS]))[0]
        noise = pipe.unet(latents, 999, encoder_hidden_states=embeds).sample
        image = pipe.vae.decode(noise / pipe.vae.config.scaling_factor).sample
    return {"text_encoder": embeds, "unet": noise, "vae": image}


def test_an_sd15_architecture_checkpoint_loads_with_the_shipped_configs(tmp_path: Path) -> None:
    original = sd15_random_bf16()
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
    # A 64 px image's latents (the smallest SD 1.5's three downsamplings allow).
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.bfloat16)
    ours, theirs = forward(original, latents), forward(loaded, latents)
    image = ours["vae"].float()
    assert bool(torch.isfinite(image).all()) and image.std() > 0.05, "a degenerate image would prove nothing"
    for name in ours:  # bf16 on CPU is deterministic for the same modules and inputs
        assert torch.equal(ours[name], theirs[name]), name
