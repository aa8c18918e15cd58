"""Train the built-in shapes model: a real, small Stable Diffusion pipeline, on this CPU.

Usage::

    python -m worker.shapes.train --out worker/shapes/model --vae-steps 1500 --unet-steps 12000

Two stages, as Stable Diffusion itself was made: an AutoencoderKL learns to compress 32 px
scenes into 8 x 8 x 4 latents, then a UNet2DConditionModel with cross-attention learns to
denoise those latents given a CLIP text encoder's output (epsilon prediction, the SD noise
schedule). Captions are dropped 10% of the time, so classifier-free guidance works. The text
encoder stays frozen at its random init unless ``--train-text-encoder`` (SD freezes CLIP;
whether a random CLIP is enough here is measured, not assumed). Everything comes from ``--seed``,
so a run is reproducible step for step; the folder holds safetensors only, plus
``training.json`` with the recipe, losses and the minutes it took.

Status: the recipe runs end to end (tests/integration/test_shapes_training.py trains a few
steps, saves, loads and generates), but its sizes and step counts are not yet tuned to the
"well under an hour on 2 cores" budget: that needs runs on a quiet machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from worker.shapes.scenes import COLOURS, POSITIONS, SHAPES, SIZES, render, training_scenes
from worker.tiny import BOS_TOKEN, EOS_TOKEN, bytes_to_unicode, sd_scheduler

IMAGE_SIZE = 32
MAX_TOKENS = 24  # the longest caption is 16 tokens with BOS/EOS
TEXT_WIDTH = 64
#: Every word a caption uses becomes one token (the rest of CLIP's BPE is kept byte-level).
WORDS = sorted(
    {*COLOURS, *SHAPES, *SIZES, *(w for p in POSITIONS for w in p.split())}
    | {"a", "an", "and", "at", "the", "in", "on", "background"}
)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges learned on ``words`` until each is one symbol (most frequent pair first,
    ties by name), so the tokenizer, applying them in this order, gives each word one token."""
    pieces = [[*word[:-1], word[-1] + "</w>"] for word in words]
    merges: list[tuple[str, str]] = []
    while any(len(p) > 1 for p in pieces):
        counts: dict[tuple[str, str], int] = {}
        for symbols in pieces:
            for pair in itertools.pairwise(symbols):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for i, symbols in enumerate(pieces):
            merged, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    merged.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            pieces[i] = merged
    return merges


def vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP byte-level BPE vocabulary in which each word of :data:`WORDS` is one token."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = learn_merges(WORDS)
    tokens += [a + b for a, b in merges if a + b not in tokens]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_components(seed: int) -> dict[str, Any]:
    """Fresh tokenizer, text encoder, VAE and UNet, each from its own seed."""
    vocab, merges = vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=cast(Any, merges), model_max_length=MAX_TOKENS)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=TEXT_WIDTH,
            intermediate_size=4 * TEXT_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=TEXT_WIDTH,
            bos_token_id=vocab[BOS_TOKEN],
            eos_token_id=vocab[EOS_TOKEN],
            pad_token_id=vocab[EOS_TOKEN],
        )
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32, 64),  # three blocks: two 2x downsamples, 32 px -> 8 x 8 latents
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": unet}


def batches(seed: int, size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless (images in [-1, 1], captions) batches of freshly rendered training scenes."""
    stream = training_scenes(seed)
    while True:
        pairs = [next(stream) for _ in range(size)]
        pixels = np.stack([np.asarray(render(scene, IMAGE_SIZE), dtype=np.float32) for scene, _ in pairs])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1.0
        yield images, [caption for _, caption in pairs]


def train_vae(vae: AutoencoderKL, steps: int, seed: int, batch: int, log: list[dict[str, float]]) -> float:
    """Reconstruction (L1 + MSE) with a light KL; returns the latents' scaling factor (1 / std)."""
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    data = batches(seed, batch)
    vae.train()
    for step in range(steps):
        images, _ = next(data)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / images[0].numel()
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + 1e-4 * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({"stage": 0, "step": step, "loss": round(loss.item(), 5)})
            print(f"vae step {step}/{steps} loss {loss.item():.4f}", flush=True)
    vae.eval()
    with torch.no_grad():
        images, _ = next(batches(seed + 99, 256))
        latents = vae.encode(images).latent_dist.mode()
    return float(1.0 / latents.std())


def encode_captions(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return cast(torch.Tensor, text_encoder(ids.input_ids)[0])


def train_unet(
    parts: dict[str, Any],
    scale: float,
    steps: int,
    seed: int,
    batch: int,
    train_text: bool,
    log: list[dict[str, float]],
) -> None:
    """Epsilon prediction on the SD noise schedule, 10% empty captions, cosine learning rate."""
    unet, vae, text_encoder, tokenizer = parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"]
    noise_schedule = DDPMScheduler.from_config(sd_scheduler().config)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    optimiser = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-2)
    warmup = min(500, steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / max(steps, 1))),
    )
    text_encoder.requires_grad_(train_text)
    text_encoder.train(train_text)
    vae.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    data = batches(seed + 1, batch)
    unet.train()
    for step in range(steps):
        images, captions = next(data)
        dropped = torch.rand(len(captions), generator=generator) < 0.1
        captions = ["" if drop else caption for caption, drop in zip(captions, dropped.tolist(), strict=True)]
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator) * scale
        with torch.set_grad_enabled(train_text):
            context = encode_captions(tokenizer, text_encoder, captions)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(captions),), generator=generator)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps, context).sample, noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        if step % 200 == 0 or step == steps - 1:
            log.append({"stage": 1, "step": step, "loss": round(loss.item(), 5)})
            print(f"unet step {step}/{steps} loss {loss.item():.4f}", flush=True)
    unet.eval()
    text_encoder.eval()


def train(out: Path, seed: int, vae_steps: int, unet_steps: int, batch: int, train_text: bool) -> dict[str, Any]:
    """Train both stages and save the pipeline to ``out`` (safetensors); returns the record."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    parts = build_components(seed)
    log: list[dict[str, float]] = []
    scale = train_vae(parts["vae"], vae_steps, seed, batch, log)
    parts["vae"].register_to_config(scaling_factor=scale)
    vae_minutes = (time.perf_counter() - started) / 60
    train_unet(parts, scale, unet_steps, seed, batch, train_text, log)
    components: dict[str, Any] = {**parts, "scheduler": sd_scheduler(), "safety_checker": None,
                                  "feature_extractor": None, "image_encoder": None}  # fmt: skip
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    record = {
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "vae_steps": vae_steps,
        "unet_steps": unet_steps,
        "batch": batch,
        "train_text_encoder": train_text,
        "latent_scaling_factor": round(scale, 5),
        "minutes": {"vae": round(vae_minutes, 1), "total": round((time.perf_counter() - started) / 60, 1)},
        "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "log": log,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--train-text-encoder", action="store_true")
    args = parser.parse_args()
    record = train(args.out, args.seed, args.vae_steps, args.unet_steps, args.batch, args.train_text_encoder)
    print(f"trained in {record['minutes']['total']} min; saved to {args.out}")


if __name__ == "__main__":
    main()
