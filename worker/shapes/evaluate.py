"""Does a shapes model draw what its prompt says? Scores it on the held-out prompts.

Usage::

    python -m worker.shapes.evaluate --model worker/shapes/model [--prompts 120] [--guidance 7]

Each held-out scene's canonical caption (never a training caption) is generated once with a
fixed seed and read back by :mod:`worker.shapes.scorer`; the result is the share of images with
the right shape colour, background colour, shape kind, position and size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from worker.shapes.scenes import Scene, evaluation_scenes
from worker.shapes.scorer import score


def load(folder: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    seeds: list[int],
    guidance: float,
    steps: int = 20,
    negative: list[str] | None = None,
    size: int = 32,
) -> np.ndarray:
    """uint8 images (N, size, size, 3), one generator per image, in batches of 16."""
    out = []
    for start in range(0, len(prompts), 16):
        chunk = slice(start, start + 16)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[chunk]]
        with torch.inference_mode():
            images = pipe(prompt=prompts[chunk], negative_prompt=negative[chunk] if negative else None,
                          generator=generators, num_inference_steps=steps, guidance_scale=guidance,
                          height=size, width=size, output_type="np").images  # fmt: skip
        out.append((np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def rates(images: np.ndarray, scenes: list[Scene]) -> dict[str, float]:
    scores = [score(image, scene) for image, scene in zip(images, scenes, strict=True)]
    return {field: round(float(np.mean([getattr(s, field) for s in scores])), 3) for field in vars(scores[0])}


def evaluate(folder: Path, prompts: int, guidance: float, seed: int = 0) -> dict[str, Any]:
    pipe = load(folder)
    scenes = evaluation_scenes()[:prompts]
    images = generate(pipe, [s.caption() for s in scenes], [seed + i for i in range(len(scenes))], guidance)
    return {"prompts": len(scenes), "guidance": guidance, **rates(images, scenes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--guidance", type=float, default=7.0)
    args = parser.parse_args()
    print(json.dumps(evaluate(args.model, args.prompts, args.guidance)))


if __name__ == "__main__":
    main()
