"""Does the compiled fast path pay? Eager and compiled side by side, in the worker's engine.

For each case one process loads the real :class:`~worker.pipelines.engine.Engine` with
``SFUMATO_COMPILE=on`` (worker/pipelines/fast_path.py), then

1. runs every batch size eager once (the fast path paused), recording the peak memory;
2. compiles each batch size (the worker's warm-up, timed; a fresh inductor cache, so the
   compile time is the cold one a first start pays);
3. times the same whole-pipeline calls eager and compiled, alternated call by call (so a
   change in the machine's load reaches both sides alike): images/s, latency per call, peak
   memory, recompiles after warm-up (should be 0), and how far the compiled images are from
   the eager ones (max |delta| in [0, 1] floats, 8-bit levels).

On CUDA it also counts the FLOPs of an image (``torch.utils.flop_counter`` on the eager
pipeline at 1 and 2 steps, extrapolated to the case's steps) and reports model FLOP
utilisation against the device's dense fp16/bf16 peak. It writes
``bench/results/compile-<case>.json``. Usage::

    python -m bench.compile --case tiny        # ~3 min here
    python -m bench.compile --case shapes      # ~3 min here
    SFUMATO_TORCH_THREADS=2 python -m bench.compile --case sd15       # bf16, 256 px: ~15 min here
    python -m bench.compile --case sd15-cuda   # on a GPU machine: 512 px fp16, batch 1 and 8
    python -m bench.compile --case sd15-cuda --mode reduce-overhead --out compile-sd15-cuda-cudagraphs

``--cases tiny,shapes,sd15`` runs several cases (each in its own process) into one file
(``compile-cpu.json``; ``--merge`` joins ``--json-to`` files of separate runs instead). The docs
table is ``bench/compile_table.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cpu import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"

#: Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s, by a substring of the device name.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0}


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # "tiny", "shapes" or "sd15" (the SD 1.5 architecture, random weights: bench/sd15_random.py)
    size: int
    steps: int
    dtype: str
    batches: tuple[int, ...]
    calls: int  # timed calls per batch size and mode
    device: str = "cpu"
    scheduler: str = "ddim"
    #: SFUMATO_COMPILE_VAE (the decode is ~15% of an SD 1.5 image at 256 px on CPU).
    compile_vae: bool = True


CASES = {
    "tiny": Case("tiny", "tiny", 64, 20, "float32", (1, 4), calls=5),
    "shapes": Case("shapes", "shapes", 32, 20, "float32", (1, 4), calls=5),
    "sd15": Case("sd15", "sd15", 256, 20, "bfloat16", (1, 4), calls=2),
    "sd15-cuda": Case("sd15-cuda", "sd15", 512, 20, "float16", (1, 8), calls=5, device="cuda"),
}


def settings_for(case: Case, data_dir: Path, cache: Path, mode: str, freezing: bool, compiled: bool = True) -> Any:
    from core.config import Settings

    model = case.model
    if model == "sd15":
        from bench.sd15_random import ensure_sd15_random

        model = str(ensure_sd15_random(data_dir))
    threads = os.environ.get("SFUMATO_TORCH_THREADS")
    values: dict[str, Any] = {
        "data_dir": data_dir, "model": model, "model_id": None, "device": case.device, "dtype": case.dtype,
        "attention": "sdpa", "torch_threads": int(threads) if threads else None, "compile": "on" if compiled else "off",
        "compile_buckets": case.batches, "compile_cache_dir": cache, "compile_mode": mode,
        "compile_freezing": freezing, "compile_vae": case.compile_vae, "prompt_cache_size": 0,
    }  # fmt: skip
    return Settings(**values)


def payloads(engine: Any, case: Case, batch: int, offset: int, steps: int) -> list[Any]:
    from core.schemas import JobPayload

    common: dict[str, Any] = {
        "tenant": "bench", "model": engine.spec.id, "mode": "txt2img", "negative_prompt": "",
        "width": case.size, "height": case.size, "steps": steps, "guidance_scale": 7.5,
        "scheduler": case.scheduler, "n": 1, "clip_skip": 0, "output_format": "png", "created_at": time.time(),
    }  # fmt: skip
    return [
        JobPayload(job_id=f"b{offset + i}", prompt=f"a lighthouse at dusk {offset + i}", seed=offset + i, **common)
        for i in range(batch)
    ]


def _sync(case: Case) -> None:
    if case.device == "cuda":
        torch.cuda.synchronize()


def _resident_bytes(case: Case) -> int:
    """Memory held now: CUDA's allocated bytes, or the process's resident set on CPU."""
    if case.device == "cuda":
        return int(torch.cuda.memory_allocated())
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _call(engine: Any, case: Case, batch: int, offset: int, steps: int) -> tuple[float, list[np.ndarray]]:
    jobs = payloads(engine, case, batch, offset, steps)
    started = time.perf_counter()
    images = engine.generate_arrays(jobs)
    _sync(case)
    return time.perf_counter() - started, images


def _point(batch: int, latencies: list[float], activations: int | None) -> dict[str, Any]:
    seconds = sum(latencies)
    point: dict[str, Any] = {
        "batch": batch,
        "images_per_s": round(batch * len(latencies) / seconds, 4),
        "latency_s": round(seconds / len(latencies), 3),
        "latency_min_s": round(min(latencies), 3),
    }
    if activations is not None:  # CUDA: the call's peak above what was allocated before it
        point["call_peak_gib"] = round(activations / 2**30, 2)
    return point


#: The sides timed per batch: a worker without compilation (``SFUMATO_COMPILE=off``: the
#: baseline), the compiled worker's own eager forward (its channels_last weights, fast path
#: paused: what its exact/LoRA/ControlNet batches run) and the compiled forward.
SIDES = ("eager", "eager_channels_last", "compiled")


def timed_sides(
    engines: dict[str, Any], case: Case, batch: int
) -> tuple[dict[str, dict[str, Any]], dict[str, list[np.ndarray]]]:
    """``case.calls`` calls of ``batch`` images per side, the sides rotated call by call (so a
    change in the machine's load during the run reaches every side alike); the last images of
    each side for comparison."""
    latencies: dict[str, list[float]] = {side: [] for side in SIDES}
    images: dict[str, list[np.ndarray]] = {}
    activations: dict[str, int] = dict.fromkeys(SIDES, 0)
    for call in range(case.calls):
        order = SIDES[call % len(SIDES) :] + SIDES[: call % len(SIDES)]
        for side in order:
            engine = engines["compiled" if side != "eager" else "eager"]
            paused = engine.fast_path.eager() if side == "eager_channels_last" else contextlib.nullcontext()
            if case.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            before = _resident_bytes(case)
            with paused:
                seconds, images[side] = _call(engine, case, batch, 1000 * call, case.steps)
            latencies[side].append(seconds)
            if case.device == "cuda":
                activations[side] = max(activations[side], int(torch.cuda.max_memory_allocated()) - before)
    cuda = case.device == "cuda"
    return {side: _point(batch, latencies[side], activations[side] if cuda else None) for side in SIDES}, images


def image_flops(engine: Any, case: Case) -> float:
    """FLOPs of one image at ``case.steps`` (eager; linear in steps: measured at 1 and 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for steps in (1, 2):
        with engine.fast_path.eager(), FlopCounterMode(display=False) as counter:
            engine.generate_arrays(payloads(engine, case, 1, 0, steps))
        counts.append(counter.get_total_flops())
    per_step = counts[1] - counts[0]
    return float(counts[0] + per_step * (case.steps - 1))


def drift(eager: list[np.ndarray], compiled: list[np.ndarray]) -> dict[str, Any]:
    a, b = np.concatenate(eager), np.concatenate(compiled)
    levels = np.abs(np.round(a * 255).astype(int) - np.round(b * 255).astype(int))
    return {
        "max_abs": float(np.abs(a - b).max()),
        "mean_abs": float(np.abs(a - b).mean()),
        "max_levels": int(levels.max()),
        "share_values_changed": round(float((levels > 0).mean()), 5),
    }


def run_case(case: Case, data_dir: Path, mode: str, freezing: bool) -> dict[str, Any]:
    from worker.pipelines.engine import Engine

    with tempfile.TemporaryDirectory(prefix="sfumato-compile-cache-", ignore_cleanup_errors=True) as cache:
        before = _resident_bytes(case)
        eager = Engine.load(settings_for(case, data_dir, Path(cache), mode, freezing, compiled=False))
        for b in case.batches:  # first-call costs (allocator, kernels) out of the timed figures
            _call(eager, case, b, 0, 1)
        memory = {"eager": _resident_bytes(case) - before}
        before = _resident_bytes(case)
        engine = Engine.load(settings_for(case, data_dir, Path(cache), mode, freezing))
        path = engine.fast_path
        assert path is not None
        with path.eager():
            for b in case.batches:
                _call(engine, case, b, 0, 1)
        compile_s = {}
        for b in case.batches:  # what the worker's warm-up does, at this case's size
            graphs, started = path.stats.graphs, time.perf_counter()
            engine.generate_arrays(payloads(engine, case, b, 0, 1))
            _sync(case)
            compile_s[b] = {"seconds": round(time.perf_counter() - started, 1), "graphs": path.stats.graphs - graphs}
            print(f"{case.name}: compiled batch {b} in {compile_s[b]['seconds']} s", flush=True)
        path.mark_ready()
        memory["compiled"] = _resident_bytes(case) - before  # weights, frozen constants, kernels
        points = []
        for b in case.batches:
            sides, images = timed_sides({"eager": eager, "compiled": engine}, case, b)
            e, c = sides["eager"], sides["compiled"]
            points.append({
                "batch": b, **sides,
                "speedup": round(c["images_per_s"] / e["images_per_s"], 3),
                "speedup_over_eager_channels_last": round(
                    c["images_per_s"] / sides["eager_channels_last"]["images_per_s"], 3),
                "compile_s": compile_s[b]["seconds"], "graphs": compile_s[b]["graphs"],
                "drift": drift(images["eager"], images["compiled"]),
                "drift_eager_channels_last": drift(images["eager"], images["eager_channels_last"]),
            })  # fmt: skip
            print(f"{case.name} batch {b}: " + ", ".join(f"{k} {v['images_per_s']} img/s" for k, v in sides.items())
                  + f", x{points[-1]['speedup']}", flush=True)  # fmt: skip
        result: dict[str, Any] = {
            "case": asdict(case),
            "compile": {"backend": "inductor", "mode": mode, "freezing": freezing, "vae": case.compile_vae},
            "points": points,
            "engine_memory_gib": {side: round(v / 2**30, 2) for side, v in memory.items()},
            "compile_seconds_total": round(path.stats.compile_seconds, 1),
            "recompiles_after_warmup": path.stats.recompiles,
            "unwarmed_after_warmup": path.stats.unwarmed,
            "machine": machine(case),
        }
        if case.device == "cuda":
            flops = image_flops(engine, case)
            peak = next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(0)), None)
            result["flops_per_image"] = flops
            for p in points:
                for side in SIDES:
                    achieved = flops * p[side]["images_per_s"]
                    p[side]["tflops_per_s"] = round(achieved / 1e12, 1)
                    p[side]["mfu"] = round(achieved / (peak * 1e12), 3) if peak else None
        return result


def machine(case: Case) -> dict[str, Any]:
    info: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    if case.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), help="one case, in this process")
    parser.add_argument("--cases", help="comma-separated cases, each in its own process, into one file")
    parser.add_argument("--mode", default="default", help="SFUMATO_COMPILE_MODE (default, reduce-overhead, ...)")
    parser.add_argument("--no-freezing", action="store_true", help="SFUMATO_COMPILE_FREEZING=false")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "sfumato-bench")
    parser.add_argument("--out", help="result name under bench/results/ (default compile-<case or cpu>)")
    parser.add_argument("--json-to", type=Path, help="write this case's result here (used by --cases)")
    parser.add_argument("--merge", help="comma-separated --json-to files of separate runs: write them as one --out")
    args = parser.parse_args()
    if args.merge:
        write(args.out or "compile-cpu", [json.loads(Path(p).read_text()) for p in args.merge.split(",")])
        return
    if args.cases:
        results = []
        for name in args.cases.split(","):
            with tempfile.NamedTemporaryFile(suffix=".json") as part:
                command = [sys.executable, "-m", "bench.compile", "--case", name, "--mode", args.mode,
                           "--data-dir", str(args.data_dir), "--json-to", part.name]  # fmt: skip
                subprocess.run(command + (["--no-freezing"] if args.no_freezing else []), check=True)
                results.append(json.loads(Path(part.name).read_text()))
        write(args.out or "compile-cpu", results)
        return
    if not args.case:
        parser.error("give --case or --cases")
    result = run_case(CASES[args.case], args.data_dir, args.mode, not args.no_freezing)
    if args.json_to:
        args.json_to.write_text(json.dumps(result))
    else:
        write(args.out or f"compile-{args.case}", [result])


def write(name: str, results: list[dict[str, Any]]) -> None:
    data = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
