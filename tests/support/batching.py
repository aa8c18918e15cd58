"""Alone-versus-co-batched cases shared by the batch-invariance tests and ``bench/drift_all.py``.

A short target prompt (1 image) is run alone, then in the middle and at the back of a batch of
4 images with two partner requests; each partner (1 image, 2 images) is compared alone and
co-batched too. None may move by more than :data:`BOUND` (or the figure published for that model
and scheduler). The partners' texts come from :data:`PARTNER_PROMPTS`, the hook for new kinds of
prompt: add a named case there and the tests (test_batch_invariance_models.py) and the benchmark
check, on every model, that it does not change its short neighbour's image, nor do they change it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.schemas import JobPayload
from tests.support.engine import noise_image, payload

#: The documented promise (docs/architecture.md, "Batching that never changes an image"), fp32.
BOUND = {"max_abs_float": 1e-5, "max_8bit_levels": 1, "share_of_8bit_values_changed": 0.001}

#: 89 words of the shapes model's vocabulary: past 77 tokens for a real CLIP tokenizer (2 chunks
#: of 75), 4 chunks on tiny and tiny SDXL (byte-level tokens), 5 on shapes (22-token windows);
#: within the default limit of 8 chunks on every built-in model.
LONG_PROMPT = (
    "a large red circle at the top left, a small blue square at the bottom right, a green triangle in the "
    "center, a yellow star at the top right, an orange circle at the bottom left, a purple square at the top, "
    "a small white triangle at the bottom, a large black star on the left, a blue circle on the right, "
    "a red square in the center, a green star at the top, on a white background"
)

#: Partner prompts co-batched with the target: name -> (prompt, negative prompt) of the two
#: partners. The hook for prompt kinds that must not change their neighbours' images: add an
#: entry and every model's tests and the benchmark cover it.
#:
#: - "long": a long prompt (short negative) and a long negative prompt (short prompt), so both
#:   partners pad to the same chunk count and share one call, while the one-chunk target runs
#:   in a call of its own (worker/pipelines/engine.py groups a batch by chunk count): the
#:   target must come out bit-identical, the long partners within the bound.
#: - "weighted": A1111 syntax; the first partner (one chunk: ``(x:1.3)``, ``[x]``, ``((x))``,
#:   escapes) shares the target's call, the second (n=2) has a ``BREAK``, so two chunks.
PARTNER_PROMPTS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "plain": (("a castle on a hill", "fog"), ("", "")),
    "long": ((LONG_PROMPT, "blurry"), ("a blue square", f"black, {LONG_PROMPT}")),
    "weighted": (
        ("a (red circle:1.3) at the [top], ((small)) \\(blue\\) square", "(black background:0.8), [green]"),
        ("a [[green]] star BREAK (on a white background:1.2)", "(red:0.7)"),
    ),
}

#: The built-in models, with the size the checks run at (each model's smallest sensible size).
MODEL_SIZES: dict[str, int] = {"tiny": 64, "tiny-sdxl": 64, "shapes": 32}
MODES = ("txt2img", "img2img", "inpaint")


def to_8bit(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().clip(0, 255).astype(np.int16)


def compare(alone: np.ndarray, batched: np.ndarray) -> dict[str, float]:
    """How far ``batched`` is from ``alone``: the three figures :data:`BOUND` limits."""
    assert alone.shape == batched.shape
    assert np.isfinite(alone).all() and np.isfinite(batched).all(), "an image holds NaN or inf"
    levels = np.abs(to_8bit(alone) - to_8bit(batched))
    return {
        "max_abs_float": float(np.abs(alone - batched).max()),
        "max_8bit_levels": int(levels.max()),
        "share_of_8bit_values_changed": round(float((levels > 0).mean()), 6),
    }


def worst(rows: list[dict[str, float]]) -> dict[str, float]:
    """The largest of each figure over several comparisons."""
    return {name: max(row[name] for row in rows) for name in BOUND}


def within(figures: dict[str, float], bound: dict[str, float] = BOUND) -> bool:
    return all(figures[name] <= limit for name, limit in bound.items())


@dataclass(frozen=True)
class Case:
    """One model/scheduler/mode/partner-prompt combination, at ``steps`` steps."""

    model: str
    scheduler: str
    mode: str
    prompts: str = "plain"
    steps: int = 6  # bench/drift_all.py's default: the tests re-run its cases exactly

    def common(self, guidance: float) -> dict[str, Any]:
        size = MODEL_SIZES[self.model]
        return {"model": self.model, "mode": self.mode, "scheduler": self.scheduler, "steps": self.steps,
                "width": size, "height": size, "guidance_scale": guidance}  # fmt: skip

    def target(self, guidance: float) -> JobPayload:
        return payload(job_id="t", prompt="a red circle at the top", negative_prompt="blurry", seed=11,
                       **self.common(guidance))  # fmt: skip

    def partners(self, guidance: float) -> tuple[JobPayload, JobPayload]:
        (p1, n1), (p2, n2) = PARTNER_PROMPTS[self.prompts]
        extra: dict[str, Any] = {"image_b64": noise_image(5)} if self.mode != "txt2img" else {}
        first = payload(job_id="p1", prompt=p1, negative_prompt=n1, seed=901, **self.common(guidance))
        second = payload(job_id="p2", prompt=p2, negative_prompt=n2, seed=7, n=2, **extra, **self.common(guidance))
        return first, second


Generate = Callable[[list[JobPayload]], list[np.ndarray]]


def measure(generate: Generate, case: Case, guidance: float) -> list[dict[str, Any]]:
    """Each request alone, then co-batched: the target in the middle and at the back of a batch
    of 4 images, the first partner (1 image) at the front, the second (2 images) at the back and
    in the middle. One row of figures per request and position; 12 images in all, so the whole
    matrix stays affordable on CPU."""
    target = case.target(guidance)
    first, second = case.partners(guidance)
    (target_alone,) = generate([target])
    (first_alone,) = generate([first])
    (second_alone,) = generate([second])
    middle = generate([first, target, second])
    back = generate([second, first, target])
    return [
        {"request": "target", "position": "middle", **compare(target_alone, middle[1])},
        {"request": "target", "position": "back", **compare(target_alone, back[2])},
        {"request": "partner, 1 image", "position": "front", **compare(first_alone, middle[0])},
        {"request": "partner, 2 images", "position": "back", **compare(second_alone, middle[2])},
        {"request": "partner, 2 images", "position": "front", **compare(second_alone, back[0])},
    ]
