"""The CUDA paths, checked on a real GPU: out-of-memory splitting, ``exact`` repeatability, attention.

CPU tests cover the OOM split with a fault-injecting double around the UNet; this runs it against
the CUDA caching allocator's own ``OutOfMemoryError``. The engine loads the SD 1.5 architecture
(random weights) in float16 with ``SFUMATO_ATTENTION=auto``; then, with the process capped by
``torch.cuda.set_per_process_memory_fraction`` just above what two images need:

1. a batch of 8 jobs is split until it fits, and every job gets the images it gets alone
   (within float16 batch drift, reported);
2. one image too large to fit fails alone with ``out_of_memory``;
3. the engine then serves the next request as before (same image as before the OOMs);
4. an ``exact`` request gives bit-identical images on two runs.

Writes ``bench/results/cuda-check.json``. Needs a CUDA GPU::

    python -m bench.cuda_check
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.batching import RESULTS
from bench.drift import compare
from bench.sd15_random import ensure_sd15_random
from tests.support.engine import engine_settings, payload
from worker.pipelines.engine import Engine
from worker.runtime.execute import run_splitting_on_oom

SIZE = 512
STEPS = 8
GIB = 1024**3


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench.cuda_check needs a CUDA GPU")
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = ensure_sd15_random(Path(tmp))
        settings = engine_settings(
            Path(tmp), model=str(folder), model_id="sd15", device="cuda", dtype="auto", attention="auto"
        )
        engine = Engine.load(settings)
        engine.warmup()
        report.update(dtype=str(engine.dtype), attention=engine.attention)
        common = {"model": "sd15", "width": SIZE, "height": SIZE, "steps": STEPS, "scheduler": "euler_a"}
        jobs = [payload(job_id=f"j{i}", prompt=f"scene number {i}", seed=100 + i, **common) for i in range(8)]

        weights = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        solo = [engine.generate_arrays([job])[0] for job in jobs]
        per_image = torch.cuda.max_memory_allocated() - weights
        total = torch.cuda.get_device_properties(0).total_memory
        cap = weights + 2.5 * per_image
        report["memory"] = {"weights_gib": round(weights / GIB, 3), "one_image_peak_gib": round(per_image / GIB, 3),
                            "cap_gib": round(cap / GIB, 3)}  # fmt: skip
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap / total)

        # 1. A batch of 8 does not fit: split until it does; every job still gets its images.
        results = run_splitting_on_oom(engine, [engine.prepare(job) for job in jobs])
        arrays = [r for r in results if isinstance(r, np.ndarray)]
        report["split_batch_of_8"] = {
            "jobs_succeeded": len(arrays),
            "errors": [r for r in results if isinstance(r, dict)],
            "drift_vs_solo": [compare(s, a) for s, a in zip(solo, arrays, strict=False)],
        }

        # 2. One image that cannot fit fails alone, with the reason.
        big = payload(job_id="big", prompt="too large", seed=1, **{**common, "width": 2048, "height": 2048})
        (big_result,) = run_splitting_on_oom(engine, [engine.prepare(big)])
        report["single_image_too_large"] = big_result if isinstance(big_result, dict) else "unexpectedly fitted"

        # 3. The engine keeps serving, unchanged.
        (again,) = engine.generate_arrays([jobs[0]])
        report["after_oom_same_as_before"] = compare(solo[0], again)

        torch.cuda.set_per_process_memory_fraction(1.0)
        # 4. exact requests: bit-identical across runs (and never co-batched: see the CPU tests).
        exact = payload(job_id="exact", prompt="exact please", seed=7, exact=True, **common)
        first = engine.generate_arrays([exact])[0]
        second = engine.generate_arrays([exact])[0]
        report["exact_bit_identical"] = bool(np.array_equal(first, second))

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "cuda-check.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
