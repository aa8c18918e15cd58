"""Does the built-in shapes model draw what it is asked? The full report, on 120 held-out prompts.

Usage::

    python -m bench.shapes [--model worker/builtin/shapes/model] [--prompts 120]

Writes ``bench/results/shapes.json``: per-part rates at guidance 7 and 1, with a negative prompt
naming the shape's colour, img2img at strength 0.3 and 0.9 (scored against the init image's
scene and the prompt's), and what seeds do; plus the model's training record (steps, minutes).
Everything is seeded, so a re-run on the same model gives the same numbers. The thresholds the
issue set are checked by tests/integration/test_shapes_meaning.py, not here.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from training.shapes.evaluate import GUIDANCE, SIZE, STEPS, load, report
from worker.builtin.shapes import MODEL_DIR

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--out", type=Path, default=RESULTS / "shapes.json")
    args = parser.parse_args()
    started = time.perf_counter()
    figures = report(load(args.model), args.prompts)
    training = json.loads((args.model / "training.json").read_text())
    training.pop("log", None)
    result = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sampler": {"scheduler": "ddim", "steps": STEPS, "guidance": GUIDANCE, "size": SIZE},
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "training": training,
        **figures,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
