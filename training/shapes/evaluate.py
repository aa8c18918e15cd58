"""Does a shapes model draw what its prompt says? Measures it on prompts it never saw.

Usage::

    python -m training.shapes.evaluate --model worker/builtin/shapes/model [--prompts 120]

Every held-out scene's canonical caption (never a training caption) is generated with a fixed
seed per prompt and read back by :mod:`training.shapes.scorer`. Besides the plain rates (shape
colour, background colour, shape kind, position, size at the served guidance, 3) it measures what makes the
prompt matter: guidance 1 against 3 and 7, a negative prompt naming the shape's colour, img2img at a
low and a high strength, and what a seed does. ``bench/shapes.py`` writes the full report to
``bench/results/``; the tests check the same functions (tests/integration/test_shapes_meaning.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import StableDiffusionImg2ImgPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from training.shapes.scenes import COLOURS, SHAPES, Scene, evaluation_scenes, render
from training.shapes.scorer import read, score

#: Guidance, steps and size the built-in model is served with (core/models.py SHAPES_DEFAULTS).
GUIDANCE = 3.0
STEPS = 20
SIZE = 32
CHUNK = 32
#: img2img strengths compared: from about 0.1 this model starts redrawing the shape's colour while
#: the background and the layout hold (its linear noise schedule leaves less of the init image at
#: a given strength than SD's; 0.05 is a single DDIM step of 20 and changes nothing readable).
LOW_STRENGTH = 0.1
HIGH_STRENGTH = 0.9


def load(folder: Path) -> StableDiffusionPipeline:
    """The model through the real ``from_pretrained`` path (safetensors only), DDIM sampler."""
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, use_safetensors=True, dtype=torch.float32
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_uint8(images: Any) -> np.ndarray:
    return np.asarray((np.asarray(images) * 255).round().clip(0, 255), dtype=np.uint8)


def generate(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    seeds: list[int],
    guidance: float = GUIDANCE,
    negative: list[str] | None = None,
) -> np.ndarray:
    """uint8 images (N, SIZE, SIZE, 3), one generator per image, in chunks."""
    out = []
    for start in range(0, len(prompts), CHUNK):
        part = slice(start, start + CHUNK)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[part]]
        with torch.inference_mode():
            images = pipe(prompt=prompts[part], negative_prompt=negative[part] if negative else None,
                          generator=generators, num_inference_steps=STEPS, guidance_scale=guidance,
                          height=SIZE, width=SIZE, output_type="np").images  # fmt: skip
        out.append(to_uint8(images))
    return np.concatenate(out)


def img2img(
    pipe: StableDiffusionPipeline, prompts: list[str], inits: list[Scene], seeds: list[int], strength: float
) -> np.ndarray:
    """Images from ``prompts`` starting at renders of ``inits`` (the same model components)."""
    edit = StableDiffusionImg2ImgPipeline(**pipe.components)
    edit.set_progress_bar_config(disable=True)
    out = []
    for start in range(0, len(prompts), CHUNK):
        part = slice(start, start + CHUNK)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[part]]
        images = [render(scene, SIZE) for scene in inits[part]]
        with torch.inference_mode():
            result = edit(prompt=prompts[part], image=images, strength=strength, generator=generators,
                          num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="np").images  # fmt: skip
        out.append(to_uint8(result))
    return np.concatenate(out)


def rates(images: np.ndarray, scenes: list[Scene]) -> dict[str, float]:
    """Share of images with each part of their scene right (colour, background, kind, ...), and
    ``followed``: the share with all five right at once, the one figure that says how often an
    image is everything its prompt asked."""
    scores = [score(image, scene) for image, scene in zip(images, scenes, strict=True)]
    shares = {field: round(float(np.mean([getattr(s, field) for s in scores])), 3) for field in vars(scores[0])}
    followed = [s.colour and s.background and s.kind and s.size and s.position for s in scores]
    return {**shares, "followed": round(float(np.mean(followed)), 3)}


def donors(scenes: list[Scene]) -> list[Scene]:
    """For each scene, another held-out scene to start img2img from: a different shape colour,
    background and position, so "kept the init's layout" and "followed the prompt" differ."""
    picked = []
    for i, scene in enumerate(scenes):
        shape = scene.shapes[0]
        for offset in range(1, len(scenes)):
            other = scenes[(i + offset) % len(scenes)]
            o = other.shapes[0]
            if (o.colour not in (shape.colour, scene.background) and other.background not in
                    (scene.background, shape.colour) and o.position != shape.position):  # fmt: skip
                picked.append(other)
                break
        else:
            raise ValueError(f"no img2img donor for {scene.caption()!r}")
    return picked


def negative_colours(
    pipe: StableDiffusionPipeline, colours: tuple[str, ...] = tuple(COLOURS), count: int = 48
) -> dict[str, Any]:
    """Prompts that leave the colour open ("a star"), ``count`` seeds, drawn plainly and with a
    negative prompt naming each colour in turn: the share of images in the named colour, without
    and with the negative. (A negative naming the colour the prompt itself names cannot remove
    it: guidance moves toward the prompt by ``g`` and away from the negative by ``g - 1``, and
    both say the colour; the held-out rows measure that case too.)"""
    prompts = [f"a {SHAPES[i % len(SHAPES)]}" for i in range(count)]
    seeds = [2000 + i for i in range(count)]
    plain = [read(image).colour for image in generate(pipe, prompts, seeds)]
    without, steered = [], []
    for colour in colours:
        avoided = [read(image).colour for image in generate(pipe, prompts, seeds, negative=[colour] * count)]
        without.append(plain.count(colour) / count)
        steered.append(avoided.count(colour) / count)
    return {
        "prompts": " / ".join(f"a {kind}" for kind in SHAPES),
        "images_per_colour": count,
        "colours": list(colours),
        "named_colour_share_without": round(float(np.mean(without)), 3),
        "named_colour_share_with_negative": round(float(np.mean(steered)), 3),
        "per_colour_without": [round(r, 3) for r in without],
        "per_colour_with_negative": [round(r, 3) for r in steered],
    }


def seed_variation(pipe: StableDiffusionPipeline, seeds: int = 8) -> dict[str, Any]:
    """Prompts that leave position and size open ("a red circle"), each with ``seeds`` seeds:
    how many distinct (position, size) readings a prompt gets, and whether the colour holds."""
    colours = ["red", "blue", "yellow", "green", "orange", "purple"]
    prompts = [f"a {colour} {kind}" for colour, kind in zip(colours, [*SHAPES, *SHAPES], strict=False)]
    images = generate(
        pipe, [p for p in prompts for _ in range(seeds)], [1000 + k for _ in prompts for k in range(seeds)]
    )
    distinct, colour_right = [], []
    for i, prompt in enumerate(prompts):
        colour = prompt.split()[1]
        readings = [read(image) for image in images[i * seeds : (i + 1) * seeds]]
        distinct.append(len({(r.position, r.size) for r in readings if r.colour == colour}))
        colour_right.append(np.mean([r.colour == colour for r in readings]))
    return {
        "prompts": len(prompts),
        "seeds_per_prompt": seeds,
        "mean_distinct_position_size": round(float(np.mean(distinct)), 2),
        "min_distinct_position_size": int(min(distinct)),
        "colour": round(float(np.mean(colour_right)), 3),
    }


def report(pipe: StableDiffusionPipeline, prompts: int = 120, seed: int = 0) -> dict[str, Any]:
    """Every figure the README quotes, on the first ``prompts`` held-out scenes."""
    scenes = evaluation_scenes()[:prompts]
    captions = [scene.caption() for scene in scenes]
    seeds = [seed + i for i in range(len(scenes))]
    guided = generate(pipe, captions, seeds)
    again = generate(pipe, captions[:8], seeds[:8])
    other_seeds = generate(pipe, captions[:8], [s + 10_000 for s in seeds[:8]])
    negative = generate(pipe, captions, seeds, negative=[scene.shapes[0].colour for scene in scenes])
    init = donors(scenes)
    low = img2img(pipe, captions, init, seeds, strength=LOW_STRENGTH)
    high = img2img(pipe, captions, init, seeds, strength=HIGH_STRENGTH)
    return {
        "prompts": len(scenes),
        "guidance": GUIDANCE,
        "guidance_served": rates(guided, scenes),
        "guidance_7": rates(generate(pipe, captions, seeds, guidance=7.0), scenes),
        "guidance_1": rates(generate(pipe, captions, seeds, guidance=1.0), scenes),
        "negative_colour": rates(negative, scenes),
        "negative_colour_open": negative_colours(pipe),
        "img2img": {
            "strengths": [LOW_STRENGTH, HIGH_STRENGTH],
            "strength_low_vs_init": rates(low, init),
            "strength_low_vs_prompt": rates(low, scenes),
            "strength_high_vs_init": rates(high, init),
            "strength_high_vs_prompt": rates(high, scenes),
        },
        "seeds": {
            "same_seed_identical": bool(np.array_equal(guided[:8], again)),
            "other_seed_pixels_differ": sum(
                not np.array_equal(a, b) for a, b in zip(guided[:8], other_seeds, strict=True)
            ),
            **seed_variation(pipe),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=120)
    args = parser.parse_args()
    print(json.dumps(report(load(args.model), args.prompts), indent=2))


if __name__ == "__main__":
    main()
