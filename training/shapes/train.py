"""Train the built-in shapes model: a real, small Stable Diffusion pipeline, on this CPU.

Usage (the committed model; about 45 minutes on 2 cores)::

    python -m training.shapes.train --out worker/builtin/shapes/model --train-text-encoder

Two stages, as Stable Diffusion itself was made: an AutoencoderKL learns to compress 32 px
scenes into 16 x 16 x 4 latents, then a UNet2DConditionModel with cross-attention learns to
denoise those latents given a CLIP text encoder's output (epsilon prediction with min-SNR
weights, DDPM's linear noise schedule). Some captions are dropped to "" (``CAPTION_DROPOUT``),
so classifier-free guidance works. The text encoder stays frozen at its random init unless
``--train-text-encoder`` (SD freezes CLIP; a random CLIP has nothing to be kept, so here it
learns with the UNet). Everything comes from ``--seed``, so a run is reproducible step for
step on one machine and thread count; the folder holds float16 safetensors only, plus
``training.json`` with the recipe, losses and the minutes it took. ``python -m bench.shapes``
then measures what it draws.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from training.shapes.scenes import COLOURS, POSITIONS, SHAPES, SIZES, render, training_scenes
from worker.builtin.tiny import BOS_TOKEN, EOS_TOKEN, bytes_to_unicode

IMAGE_SIZE = 32
MAX_TOKENS = 24  # the longest caption is 16 tokens with BOS/EOS
TEXT_WIDTH = 64
#: The VAE halves the side once: 32 px -> 16 x 16 x 4 latents. (Two halvings, 8 x 8, left the
#: VAE too blurry to tell a small star from a triangle after the minutes it can train here.)
VAE_CHANNELS = (32, 64)
LATENT_SIZE = IMAGE_SIZE // 2 ** (len(VAE_CHANNELS) - 1)
UNET_CHANNELS = (32, 64, 128)
UNET_LR = 6e-4
#: The UNet stage's length. On 2 CPU cores a step costs about the same per image at any batch
#: size, so a smaller batch buys more updates for the same minutes.
UNET_STEPS = 9000
UNET_BATCH = 32
EDGE_WEIGHT = 4.0
OFFSET_NOISE = 0.1
#: Share of training captions replaced by "" so the UNet also learns the unconditional
#: prediction classifier-free guidance extrapolates from.
CAPTION_DROPOUT = 0.2
#: Min-SNR-gamma loss weights (Hang et al. 2023): a timestep whose signal-to-noise ratio is above
#: gamma counts gamma/SNR as much, so the few nearly clean steps (whose fine-grain noise is easy
#: and plentiful) stop dominating the gradient and the minutes go to layout and shape.
MIN_SNR_GAMMA = 5.0
#: The phrasings a training scene is captioned in (see :meth:`Scene.caption`).
CAPTION_STYLES = (0, 0, 1, 2, 3)
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


def shapes_scheduler() -> DDIMScheduler:
    """DDPM's original linear schedule (betas 1e-4 .. 0.02), not SD's scaled-linear one.

    SD's schedule leaves a signal of sqrt(0.0047) = 0.07 in the last timestep; averaged over a
    16 x 16 latent that is as strong as the noise, so the model learned to read the background
    colour and the shape's place from the starting noise and ignored those words (measured:
    background right 18%, position 20%, with colour and shape followed). Here the last step
    keeps 0.007, a tenth of that, so only the prompt can say them."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def build_components(seed: int, unet_channels: tuple[int, ...] = UNET_CHANNELS) -> dict[str, Any]:
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
        block_out_channels=VAE_CHANNELS,  # one 2x downsample per block after the first
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )
    torch.manual_seed(seed + 2)
    # Cross-attention where the latents are small (its cost grows with the square of the
    # positions); the full-size level is convolution only, as in SD's last down block.
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(unet_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=unet_channels,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if d.startswith("CrossAttn") else "UpBlock2D" for d in reversed(down)
        ),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": unet}


@dataclass
class Dataset:
    """A fixed set of rendered training scenes: pixels in [-1, 1] and each scene's captions
    (one per phrasing, so every visit can say it differently)."""

    images: torch.Tensor
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.captions)


def make_dataset(seed: int, count: int) -> Dataset:
    """``count`` training scenes rendered at :data:`IMAGE_SIZE` (about 0.2 ms each)."""
    pairs = list(training_scenes(seed, count))
    pixels = np.stack([np.asarray(render(scene, IMAGE_SIZE), dtype=np.uint8) for scene, _ in pairs])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    captions = [sorted({scene.caption(style) for style in CAPTION_STYLES}) for scene, _ in pairs]
    return Dataset(images, captions)


def train_vae(
    vae: AutoencoderKL, data: Dataset, steps: int, seed: int, batch: int, log: list[dict[str, float]]
) -> float:
    """Edge-weighted L1 reconstruction of the posterior mean, with a light KL that only keeps the
    latents near unit scale; returns their scaling factor (1 / std).

    Most pixels are flat background, so a plain L1 loss is nearly satisfied by blurry blobs;
    weighting pixels on an edge :data:`EDGE_WEIGHT` times more gets the corners that tell a star
    from a triangle within minutes (measured on held-out renders: shape read right on 70% of
    reconstructions after 300 steps, against 58% unweighted)."""
    optimiser = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _warmup_cosine(steps))
    generator = torch.Generator().manual_seed(seed)
    vae.train()
    for step in range(steps):
        images = data.images[torch.randint(0, len(data), (batch,), generator=generator)]
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.mode()).sample
        kl = posterior.kl().mean() / images[0].numel()
        loss = ((recon - images).abs() * (1 + EDGE_WEIGHT * edges(images))).mean() + 1e-4 * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({"stage": 0, "step": step, "loss": round(loss.item(), 5)})
            print(f"vae step {step}/{steps} loss {loss.item():.4f}", flush=True)
    vae.eval()
    vae.requires_grad_(False)
    deterministic_posterior(vae)
    with torch.no_grad():
        latents = vae.encode(data.images[:1024]).latent_dist.mode()
    return float(1.0 / latents.std())


def deterministic_posterior(vae: AutoencoderKL) -> None:
    """Pin the encoder's log-variance output at -30 (std 3e-7; diffusers clamps it there).

    The VAE learns on its posterior mean, so nothing trains the variance head and the light KL
    pulls it towards std 1; img2img and inpainting *sample* the posterior to encode the init
    image, and at std 1 that noise would drown the image (measured: an img2img at strength 0.3
    kept the init's shape colour in 12% of images). Pinned, a sample is the mean it learned."""
    channels = int(vae.config["latent_channels"])
    head = vae.quant_conv  # built with use_quant_conv=True (the default), so a Conv2d with bias
    if head is None or head.bias is None:
        raise ValueError("this VAE has no quant_conv with a bias to pin")
    with torch.no_grad():
        head.weight[channels:] = 0.0
        head.bias[channels:] = -30.0


def edges(images: torch.Tensor) -> torch.Tensor:
    """1 where a pixel differs from a neighbour (a shape's outline), else 0; (N, 1, H, W)."""
    across = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().amax(1, keepdim=True)
    down = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().amax(1, keepdim=True)
    edge = torch.zeros_like(images[:, :1])
    edge[:, :, :, 1:] += across
    edge[:, :, :, :-1] += across
    edge[:, :, 1:] += down
    edge[:, :, :-1] += down
    return (edge > 0.05).float()


def encode_dataset(vae: AutoencoderKL, data: Dataset) -> torch.Tensor:
    """Each image's latent (the posterior mean, which the VAE was trained to decode), computed
    once with the VAE frozen, so the UNet stage never runs the encoder."""
    with torch.inference_mode():
        return torch.cat(
            [vae.encode(data.images[start : start + 512]).latent_dist.mode() for start in range(0, len(data), 512)]
        )


def encode_captions(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return cast(torch.Tensor, text_encoder(ids.input_ids)[0])


def min_snr_weights(
    noise_schedule: DDPMScheduler, timesteps: torch.Tensor, gamma: float = MIN_SNR_GAMMA
) -> torch.Tensor:
    """Per-sample loss weights min(SNR, gamma) / SNR for epsilon prediction (1 on noisy steps)."""
    alphas = noise_schedule.alphas_cumprod[timesteps].float()
    snr = alphas / (1 - alphas)
    return snr.clamp(max=gamma) / snr


def _warmup_cosine(steps: int) -> Callable[[int], float]:
    warmup = min(200, steps // 10 + 1)
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))


def train_unet(
    parts: dict[str, Any],
    data: Dataset,
    scale: float,
    steps: int,
    seed: int,
    batch: int,
    train_text: bool,
    log: list[dict[str, float]],
    caption_dropout: float = CAPTION_DROPOUT,
) -> None:
    """Epsilon prediction on :func:`shapes_scheduler`'s noise schedule with min-SNR weights,
    ``caption_dropout`` empty captions, cosine learning rate."""
    unet, vae, text_encoder, tokenizer = parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"]
    noise_schedule = DDPMScheduler.from_config(shapes_scheduler().config)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    optimiser = torch.optim.AdamW(params, lr=UNET_LR, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _warmup_cosine(steps))
    text_encoder.requires_grad_(train_text)
    text_encoder.train(train_text)
    latents_of = encode_dataset(vae, data) * scale
    generator = torch.Generator().manual_seed(seed)
    unet.train()
    for step in range(steps):
        index = torch.randint(0, len(data), (batch,), generator=generator)
        phrasing = torch.randint(0, 1 << 30, (batch,), generator=generator).tolist()
        dropped = (torch.rand(batch, generator=generator) < caption_dropout).tolist()
        captions = [
            "" if drop else data.captions[i][k % len(data.captions[i])]
            for i, k, drop in zip(index.tolist(), phrasing, dropped, strict=True)
        ]
        latents = latents_of[index]
        with torch.set_grad_enabled(train_text):
            context = encode_captions(tokenizer, text_encoder, captions)
        noise = torch.randn(latents.shape, generator=generator)
        # Offset noise: a per-image, per-channel constant on top, so the model also learns to
        # move a latent's mean (the background colour) rather than keep the one it starts with.
        noise += OFFSET_NOISE * torch.randn((batch, latents.shape[1], 1, 1), generator=generator)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,), generator=generator)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        per_image = F.mse_loss(unet(noisy, timesteps, context).sample, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (min_snr_weights(noise_schedule, timesteps) * per_image).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({"stage": 1, "step": step, "loss": round(loss.item(), 5)})
            print(f"unet step {step}/{steps} loss {loss.item():.4f}", flush=True)
    unet.eval()
    text_encoder.eval()


def train(
    out: Path,
    seed: int,
    vae_steps: int,
    unet_steps: int,
    batch: int,
    train_text: bool,
    vae_batch: int = 32,
    dataset_size: int = 40_000,
    unet_channels: tuple[int, ...] = UNET_CHANNELS,
    half: bool = True,
    vae_from: Path | None = None,
    caption_dropout: float = CAPTION_DROPOUT,
) -> dict[str, Any]:
    """Train both stages and save the pipeline to ``out`` (safetensors); returns the record.

    ``vae_from``: reuse that folder's trained VAE and train only the UNet (for comparing UNet
    stage choices, such as a frozen or trained text encoder, on one VAE)."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    parts = build_components(seed, unet_channels)
    data = make_dataset(seed, dataset_size)
    log: list[dict[str, float]] = []
    vae_before = 0.0  # minutes the reused VAE took to train, counted in the totals
    if vae_from is None:
        scale = train_vae(parts["vae"], data, vae_steps, seed, vae_batch, log)
        parts["vae"].register_to_config(scaling_factor=scale)
    else:
        parts["vae"] = AutoencoderKL.from_pretrained(vae_from / "vae", dtype=torch.float32).requires_grad_(False)
        scale = float(parts["vae"].config.scaling_factor)
        earlier = json.loads((vae_from / "training.json").read_text())
        vae_steps, vae_before = earlier["vae_steps"], earlier["minutes"]["vae"]
        log += [entry for entry in earlier["log"] if entry["stage"] == 0]
    vae_minutes = vae_before + (time.perf_counter() - started) / 60
    train_unet(parts, data, scale, unet_steps, seed + 1, batch, train_text, log, caption_dropout)
    components: dict[str, Any] = {**parts, "scheduler": shapes_scheduler(), "safety_checker": None,
                                  "feature_extractor": None, "image_encoder": None}  # fmt: skip
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    save(pipe, out, half)
    record = {
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "dataset_size": dataset_size,
        "vae_steps": vae_steps,
        "vae_batch": vae_batch,
        "unet_steps": unet_steps,
        "batch": batch,
        "unet_channels": list(unet_channels),
        "train_text_encoder": train_text,
        "caption_dropout": caption_dropout,
        "min_snr_gamma": MIN_SNR_GAMMA,
        "offset_noise": OFFSET_NOISE,
        "weights": "float16" if half else "float32",
        "latent_scaling_factor": round(scale, 5),
        "minutes": {"vae": round(vae_minutes, 1), "total": round(vae_before + (time.perf_counter() - started) / 60, 1)},
        "vae_from": None if vae_from is None else str(vae_from),
        "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "log": log,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def save(pipe: StableDiffusionPipeline, out: Path, half: bool = True) -> None:
    """The diffusers folder, safetensors only; ``half`` stores float16 weights (half the bytes;
    the worker loads them back as float32 on CPU, and the scores do not change measurably)."""
    if half:
        pipe = pipe.to(dtype=torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=UNET_STEPS)
    parser.add_argument("--batch", type=int, default=UNET_BATCH)
    parser.add_argument("--dataset-size", type=int, default=40_000)
    parser.add_argument("--train-text-encoder", action="store_true")
    parser.add_argument("--caption-dropout", type=float, default=CAPTION_DROPOUT)
    parser.add_argument("--vae-from", type=Path, default=None, help="reuse this model folder's VAE")
    args = parser.parse_args()
    record = train(args.out, args.seed, args.vae_steps, args.unet_steps, args.batch, args.train_text_encoder,
                   dataset_size=args.dataset_size, vae_from=args.vae_from,
                   caption_dropout=args.caption_dropout)  # fmt: skip
    print(f"trained in {record['minutes']['total']} min; saved to {args.out}")


if __name__ == "__main__":
    main()
