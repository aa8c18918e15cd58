"""Does switching LoRAs per request leak? RSS of one engine over alternating requests.

The engine runs in-process (no service) on the tiny model with two LoRAs made by peft
(tests/support/lora.py): A adapts the UNet, B the UNet and the text encoder. Requests cycle
A, base, B, A, base, B, ... in two phases:

* ``cached``: the default adapter cache (8), so both LoRAs stay loaded and only the active
  set switches;
* ``evicting``: a cache of ONE adapter, so every LoRA request loads its file and evicts the
  other: the worst case for leaks in loading and ``delete_adapters``.

The process RSS is sampled after every request (after ``gc.collect()``, so what is left is
what is held). Reported per phase: RSS after warm-up, peak, at the end, and the slope of a
least-squares line through the second half (KiB per 100 requests; ~0 when memory is
bounded). The base image is compared bit for bit before and after each phase. Writes
``bench/results/lora-memory.json``::

    python -m bench.lora_memory                     # 200 requests per phase, a few minutes here
    python -m bench.lora_memory --requests 20 --out /tmp/lora-memory.json   # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.batching import RESULTS
from core.schemas import JobPayload, LoraWeight
from tests.support.engine import engine_settings, payload
from tests.support.lora import make_lora
from worker.pipelines.engine import Engine

PHASES: dict[str, int] = {"cached": 8, "evicting": 1}
WARMUP = 10


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; the worker's platform)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cycle(steps: int) -> list[tuple[str, JobPayload]]:
    common: dict[str, Any] = {"steps": steps, "prompt": "a lighthouse at dusk", "seed": 5}
    return [
        ("A", payload(loras=(LoraWeight(name="a", scale=1.0),), **common)),
        ("base", payload(**common)),
        ("B", payload(loras=(LoraWeight(name="b", scale=0.8),), **common)),
    ]


def slope_kib_per_100(samples: list[int]) -> float:
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return 0.0
    fit = np.polyfit(np.arange(len(half)), np.asarray(half, dtype=np.float64), 1)
    return round(float(fit[0]) * 100 / 1024, 1)


def run_phase(data_dir: Path, name: str, cache_size: int, requests: int, steps: int) -> dict[str, Any]:
    engine = Engine.load(engine_settings(data_dir, lora_cache_size=cache_size))
    jobs = cycle(steps)
    base_job = jobs[1][1]
    base_before = engine.generate_arrays([base_job])[0]
    samples: list[int] = []
    started = time.perf_counter()
    for i in range(requests):
        engine.generate_arrays([jobs[i % len(jobs)][1]])
        gc.collect()
        samples.append(rss_bytes())
    elapsed = time.perf_counter() - started
    base_after = engine.generate_arrays([base_job])[0]
    after_warmup = samples[min(WARMUP, len(samples)) - 1]
    row = {
        "phase": name,
        "lora_cache_size": cache_size,
        "requests": requests,
        "seconds": round(elapsed, 2),
        "rss_after_warmup_mib": round(after_warmup / 2**20, 1),
        "rss_peak_mib": round(max(samples) / 2**20, 1),
        "rss_end_mib": round(samples[-1] / 2**20, 1),
        "growth_after_warmup_mib": round((samples[-1] - after_warmup) / 2**20, 2),
        "slope_second_half_kib_per_100_requests": slope_kib_per_100(samples),
        "adapters_loaded_at_end": len(engine.loras.loaded),
        "adapter_loads": engine.loras.loads,
        "adapter_evictions": engine.loras.evictions,
        "base_image_unchanged": bool(np.array_equal(base_before, base_after)),
        "rss_mib_every_request": [round(s / 2**20, 2) for s in samples],
    }
    print({k: v for k, v in row.items() if k != "rss_mib_every_request"}, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests per phase (cycle A, base, B)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per request")
    parser.add_argument("--out", type=Path, default=RESULTS / "lora-memory.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        make_lora(data_dir / "loras", "a", seed=1)
        make_lora(data_dir / "loras", "b", seed=2, text_encoder=True)
        rows = [run_phase(data_dir, name, size, args.requests, args.steps) for name, size in PHASES.items()]
    meta = {
        "model": "tiny",
        "device": "cpu",
        "dtype": "float32",
        "steps": args.steps,
        "cycle": ["A", "base", "B"],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.write_text(json.dumps({**meta, "phases": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
