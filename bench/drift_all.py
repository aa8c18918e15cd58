"""The batching promise on every built-in model, scheduler and mode, in float32 on CPU.

For each built-in model (tiny, tiny SDXL, shapes), each scheduler and each mode (txt2img,
img2img, inpaint) a target request is run alone and co-batched at the front, middle and back
of batches with partner requests (tests/support/batching.py; the partners' prompts include
every case of its ``PARTNER_PROMPTS`` hook), and each partner alone against co-batched. Writes
``bench/results/drift-all.json`` (docs/architecture.md and docs/benchmarks.md show it)::

    python -m bench.drift_all                          # the full matrix, 6 steps: ~1 h on 2 idle cores
    python -m bench.drift_all --model shapes --scheduler euler_a --steps 20
    python -m bench.drift_all --scheduler euler_a --prompts long --prompts weighted   # new partner kinds

``tests/integration/test_batch_invariance_models.py`` checks a representative part of the
matrix against the same documented bound on every ``make test``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bench.batching import RESULTS
from bench.cpu import cpu_name
from core.scheduler_names import SCHEDULER_DISPLAY_NAMES
from tests.support.batching import BOUND, MODEL_SIZES, MODES, PARTNER_PROMPTS, Case, measure, within, worst
from tests.support.engine import engine_settings
from worker.pipelines.engine import Engine

#: Float drift depends on the CPU's kernels: every case records where it was measured.
CPU = cpu_name()
#: What a case measured before cases recorded their CPU is labelled.
UNRECORDED = "not recorded"


def run_model(
    model: str, schedulers: list[str], modes: list[str], prompt_kinds: list[str], steps: int, data_dir: Path
) -> Iterator[dict[str, Any]]:
    """Every mode x scheduler x partner-prompt case of one model; one summary row per case."""
    engine = Engine.load(engine_settings(data_dir, model=model))
    guidance = engine.spec.default_guidance
    for mode in modes:
        for scheduler in schedulers:
            for prompts in prompt_kinds:
                case = Case(model, scheduler, mode, prompts, steps)
                started = time.perf_counter()
                rows = measure(lambda jobs: engine.generate_arrays(jobs), case, guidance)
                figures = worst(rows)
                row = {
                    "model": model, "scheduler": scheduler, "mode": mode, "prompts": prompts, "steps": steps,
                    "cpu": CPU, "size": MODEL_SIZES[model], "guidance": guidance, **figures,
                    "within_bound": within(figures), "positions": rows,
                    "seconds": round(time.perf_counter() - started, 1),
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }  # fmt: skip
                print({k: v for k, v in row.items() if k != "positions"}, flush=True)
                yield row


def summarise(cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model and scheduler: the worst figures over modes, prompts and CPUs (the published bound)."""
    by: dict[str, dict[str, Any]] = {}
    for model in dict.fromkeys(c["model"] for c in cases):
        by[model] = {}
        for scheduler in dict.fromkeys(c["scheduler"] for c in cases if c["model"] == model):
            mine = [c for c in cases if c["model"] == model and c["scheduler"] == scheduler]
            figures = worst(mine)
            by[model][scheduler] = {**figures, "within_bound": within(figures)}
    return by


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=sorted(MODEL_SIZES), help="default: every built-in model")
    parser.add_argument("--scheduler", action="append", choices=sorted(SCHEDULER_DISPLAY_NAMES), help="default: all")
    parser.add_argument("--mode", action="append", choices=MODES, help="default: all three")
    parser.add_argument(
        "--prompts", action="append", choices=list(PARTNER_PROMPTS), help="partner prompt kinds; default: all"
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS / "drift-all.json")
    args = parser.parse_args()
    models = args.model or list(MODEL_SIZES)
    schedulers = args.scheduler or list(SCHEDULER_DISPLAY_NAMES)
    modes = args.mode or list(MODES)
    prompt_kinds = args.prompts or list(PARTNER_PROMPTS)
    # Cases not measured this time are kept from the file: a part of the matrix can be re-measured
    # alone. A case measured on another CPU is kept beside this one's: the published bound is
    # the worst over every CPU measured, since CI may run on any of them.
    kept = json.loads(args.out.read_text())["cases"] if args.out.exists() else []
    selection = {"model": models, "scheduler": schedulers, "mode": modes, "prompts": prompt_kinds}
    cases = [
        c
        for c in kept
        if c.get("cpu", UNRECORDED) != CPU or not all(c[name] in chosen for name, chosen in selection.items())
    ]
    in_parts = bool(cases)  # the file then holds cases measured by earlier, partial runs
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for row in run_model(model, schedulers, modes, prompt_kinds, args.steps, Path(tmp)):
                cases.append(row)
                write(args.out, cases, args.steps, in_parts)  # after each case: a long run leaves what it measured


def write(out: Path, cases: list[dict[str, Any]], steps: int, in_parts: bool = False) -> None:
    order = [*MODEL_SIZES, *SCHEDULER_DISPLAY_NAMES, *MODES, *PARTNER_PROMPTS]
    cases = sorted(
        cases,
        key=lambda c: (*(order.index(c[k]) for k in ("model", "scheduler", "mode", "prompts")), c.get("cpu", "")),
    )
    result = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.drift_all"
        + ("" if steps == 6 else f" --steps {steps}")
        + (", run in parts with --model/--scheduler/--mode/--prompts (the cells shown)" if in_parts else ""),
        "dtype": "float32",
        "device": "cpu",
        "machine": {"cpus": torch.get_num_threads(), "torch": torch.__version__, "processor": platform.machine()},
        "cpus_measured": sorted({c.get("cpu", UNRECORDED) for c in cases}),
        "bound": BOUND,
        "all_within_bound": all(c["within_bound"] for c in cases),
        "by_model_and_scheduler": summarise(cases),
        "cases": cases,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}; all within the bound: {result['all_within_bound']}", flush=True)


if __name__ == "__main__":
    main()
