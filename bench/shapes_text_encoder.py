"""Frozen random CLIP or a trained one? The shapes model's UNet stage run both ways, side by side.

Usage::

    python -m bench.shapes_text_encoder [--unet-steps 1500]

SD keeps its (pretrained) CLIP frozen; the shapes model's CLIP starts random. Both UNet-stage
runs start from the committed model's VAE, the same seed, data and step count, and differ only
in whether the text encoder learns with the UNet; each is scored on the 120 held-out prompts at
the served guidance. Writes ``bench/results/shapes-text-encoder.json``. A short budget (not the committed
model's) keeps this to about a quarter of an hour on 2 cores: it says which way learns faster.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from training.shapes.evaluate import GUIDANCE, generate, load, rates
from training.shapes.scenes import evaluation_scenes
from training.shapes.train import UNET_BATCH, train
from worker.builtin.shapes import MODEL_DIR

RESULTS = Path(__file__).resolve().parent / "results"


def run(train_text: bool, steps: int, tmp: Path) -> dict[str, Any]:
    out = tmp / ("trained" if train_text else "frozen")
    started = time.perf_counter()
    record = train(out, 0, 0, steps, UNET_BATCH, train_text, vae_from=MODEL_DIR)
    minutes = round((time.perf_counter() - started) / 60, 1)
    scenes = evaluation_scenes()
    images = generate(load(out), [s.caption() for s in scenes], list(range(len(scenes))))
    final_loss = [e["loss"] for e in record["log"] if e["stage"] == 1][-1]
    return {"train_text_encoder": train_text, "unet_minutes": minutes, "final_loss": final_loss,
            **rates(images, scenes)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet-steps", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(train_text, args.unet_steps, Path(tmp)) for train_text in (False, True)]
    out = RESULTS / "shapes-text-encoder.json"
    result = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"), "unet_steps": args.unet_steps,
              "prompts": len(evaluation_scenes()), "guidance": GUIDANCE,
              "batch": UNET_BATCH, "rows": rows}  # fmt: skip
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
